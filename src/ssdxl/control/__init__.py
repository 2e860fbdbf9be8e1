"""Control and image tools for a request: ControlNet / T2I-Adapter units (``models.py``), IP-Adapter
image prompts (``ip_adapter.py``), weight-free preprocessors that turn a picture into a control map
(``preprocess.py``) and the canvas arithmetic of outpainting (``outpaint.py``)."""
