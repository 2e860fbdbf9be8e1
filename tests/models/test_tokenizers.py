from ssdxl.models.tokenizers import clip_tokenizer


def test_real_clip_vocabulary_and_ids():
    tok = clip_tokenizer("tokenizer")
    assert len(tok) == 49408
    # ids of OpenAI CLIP's BPE (as in every SDXL tokenizer)
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok("A lighthouse at dusk").input_ids == [49406, 320, 13717, 536, 19708, 49407]


def test_sdxl_padding_differs_between_the_two_tokenizers():
    first = clip_tokenizer("tokenizer")("a cat", padding="max_length", max_length=77).input_ids
    second = clip_tokenizer("tokenizer_2")("a cat", padding="max_length", max_length=77).input_ids
    assert len(first) == len(second) == 77
    assert first[4:] == [49407] * 73  # pads with <|endoftext|>
    assert second[4:] == [0] * 73  # OpenCLIP bigG pads with "!"
