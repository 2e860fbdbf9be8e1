"""The three HTTP APIs clients already speak; each module translates one into ``GenerationRequest``s."""
