from transformers import AutoTokenizer

from services.trainer.tiny_model import build_tokenizer


def test_tokenizer_is_one_token_per_byte():
    tok = build_tokenizer()
    text = "Q:37+45\nA:7+5=12 \\boxed{82}"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode())
    assert tok.decode(ids) == text


def test_saved_model_dir_keeps_spaces_and_newlines(tiny_model_dir):
    # AutoTokenizer loads qwen2 dirs with the Qwen2 tokenizer class; a character vocabulary would
    # silently drop whitespace there (a bug this project hit).
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "Q:1 + 2\nA: \\boxed{3} é"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.eos_token_id == tok.pad_token_id == 0
