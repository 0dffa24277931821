"""--identifier-lr: the identifier's own embedding learns; no other word's embedding moves."""
from pathlib import Path

import pytest
import torch

from dreambooth.training.callbacks import TrainingCallback

from dreambooth.training.config import build_config
from dreambooth.models.identifier import identifier_token_ids
from dreambooth.models import load_pipeline
from dreambooth.models.tokens import identifier_words
from dreambooth.training.trainer import train


def test_identifier_words_are_the_instance_words_the_class_lacks():
    assert identifier_words("a photo of sks dog", "a photo of dog") == ["sks"]
    assert identifier_words("a sks square", "a square") == ["sks"]
    assert identifier_words("a dog", "a dog") == []
    # the class prompt's punctuation makes no class word an identifier (its embedding would be trained)
    assert identifier_words("a sks square", "a square.") == ["sks"]
    assert identifier_words("photo of sks dog sitting", "photo of dog, sitting") == ["sks"]
    assert identifier_words("a (sks) dog", "a (dog)") == ["sks"]
    assert identifier_words("a sks very very very dog", "a dog") == ["sks", "very"]      # each word once


def test_identifier_warnings_say_what_is_wrong():
    from dreambooth.models.tokens import identifier_warnings
    from dreambooth.testing.tiny import _tokenizer
    tokenizer = _tokenizer(None)
    (same,) = identifier_warnings(tokenizer, "a sks square", "a sks square")
    assert same.startswith("every word of the instance prompt is in --class-prompt too")
    long = identifier_warnings(tokenizer, "a sks square " + "very " * 100, "a square")
    assert any(w.startswith("--instance-prompt is ") and "tokens; training reads its first 75" in w for w in long)
    # without a class prompt, the class noun beside a rare identifier is not taken for the identifier
    assert not [w for w in identifier_warnings(tokenizer, "a photo of zwx dog") if "common word" in w]
    assert not [w for w in identifier_warnings(tokenizer, "a sks dog") if "'dog'" in w]
    assert [w for w in identifier_warnings(tokenizer, "a photo of red dog") if "common word" in w]
    # captions that leave out the identifier teach the subject to their other words
    captions = ["a photo of zwx dog", "a zwx dog on grass", "a brown dog on a sofa", "a dog asleep"]
    (missing,) = identifier_warnings(tokenizer, "a photo of zwx dog", "a photo of dog", captions)
    assert missing.startswith("--captions: 2 of 3 captions do not name the identifier 'zwx' (e.g. 'a brown dog on a "
                              "sofa')")
    assert identifier_warnings(tokenizer, "a photo of zwx dog", "a photo of dog", captions[:2]) == []
    from dreambooth.models.loading import load_pipeline
    assert identifier_warnings(load_pipeline("toy").tokenizer, "a sks square", "a square") == []   # rare there
    (cut,) = identifier_warnings(tokenizer, "a photo of zwx dog", "a photo of dog", ["a zwx dog, " + "tag, " * 80])
    assert cut.startswith("--captions: 1 caption(s) longer than 75 tokens; training reads the first 75 of each")


def test_captions_name_the_identifier_where_the_tokenizer_sees_it():
    """A caption names the identifier where the tokenizer reads it as a word of its own: joined by a
    hyphen, with a possessive, in the WebUI's weight syntax; not inside a longer word."""
    from transformers import CLIPTokenizer

    import dreambooth
    from dreambooth.models.tokens import caption_warnings
    tokenizer = CLIPTokenizer.from_pretrained(Path(dreambooth.__file__).parent / "data" / "toy_model" / "tokenizer")
    named = ["sks-dog on grass", "a photo of sks's toy", "(sks:1.2)"]
    for caption in named:         # 'sks</w>': the whole word, as in 'a photo of sks dog'
        assert "sks</w>" in tokenizer.tokenize(caption)
    assert caption_warnings("a photo of sks dog", "a photo of dog", named) == []
    for other in ("asks for a walk", "a sksx dog"):
        (missing,) = caption_warnings("a photo of sks dog", "a photo of dog", [other])
        assert missing.startswith("--captions: 1 of 1 captions do not name the identifier 'sks'")


def _config(model, photos, out, **changes):
    values = dict(model=str(model), instance_dir=str(photos), instance_prompt="a photo of sks dog",
                  class_prompt="a photo of dog", num_class_images=2, class_steps=2,
                  method="full", resolution=32, max_steps=4, learning_rate=1e-4, identifier_lr=1e-2,
                  output=str(out))
    values.update(changes)
    return build_config(None, values)


def _embeddings(pipe):
    return [te.get_input_embeddings().weight.detach() for te in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None))
            if te is not None]


@pytest.mark.parametrize("model,text_encoder", [("tiny_sd1", False), ("tiny_sdxl", False), ("tiny_sd1", True)])
def test_only_the_identifier_row_moves(model, text_encoder, dog_photos, tmp_path, request):
    base_dir = request.getfixturevalue(model)
    result = train(_config(base_dir, dog_photos, tmp_path / "out", train_text_encoder=text_encoder), callbacks=[])
    base, trained = load_pipeline(str(base_dir)), load_pipeline(str(result.output))
    tokenizers = [t for t in (base.tokenizer, getattr(base, "tokenizer_2", None)) if t is not None]
    for tok, before, after in zip(tokenizers, _embeddings(base), _embeddings(trained)):
        ids = identifier_token_ids(tok, "a photo of sks dog", "a photo of dog")
        moved = (before != after).any(dim=1).nonzero().flatten().tolist()
        assert moved == sorted(ids)
    # the rest of the text encoder is the base's unless it was trained too (its other embeddings stay)
    base_rest = {k: v for k, v in base.text_encoder.state_dict().items() if "token_embedding" not in k}
    trained_state = trained.text_encoder.state_dict()
    assert all(torch.equal(v, trained_state[k]) for k, v in base_rest.items()) != text_encoder


def test_lora_ignores_it_with_a_warning(tiny_sd1, dog_photos, tmp_path):
    result = train(_config(tiny_sd1, dog_photos, tmp_path / "lora", method="lora", learning_rate=1e-3), callbacks=[])
    assert any("--identifier-lr" in w for w in result.warnings)


def test_the_identifier_alone_trains_and_where_there_is_none_the_words_are_named(tiny_sd1, dog_photos, tmp_path):
    """Only the identifier's rows move: 'a photo of sks dog on a table' moved 'on' and 'table' (in every
    prompt that says them) and, without a class prompt, 'dog'. Where no one word is the identifier
    ('my dog': a common word), the words it trains are said."""
    base = load_pipeline(str(tiny_sd1))
    sks = identifier_token_ids(base.tokenizer, "sks")
    assert identifier_token_ids(base.tokenizer, "a photo of sks dog on a table", "a photo of dog") == sks
    assert identifier_token_ids(base.tokenizer, "a photo of sks dog") == sks
    result = train(_config(tiny_sd1, dog_photos, tmp_path / "o", instance_prompt="a photo of sks dog on a table",
                           max_steps=1), callbacks=[])
    moved = (_embeddings(base)[0] != _embeddings(load_pipeline(str(result.output)))[0]).any(dim=1).nonzero()
    assert moved.flatten().tolist() == sorted(sks)
    assert not [w for w in result.warnings if "trains the embeddings of" in w or "'table'" in w], result.warnings
    result = train(_config(tiny_sd1, dog_photos, tmp_path / "p", instance_prompt="a photo of my dog", class_prompt=None,
                           max_steps=1), callbacks=[])
    said = [w for w in result.warnings if "trains the embeddings of" in w]
    assert said and "'my', 'dog'" in said[0] and "--class-prompt (e.g. 'a dog')" in said[0], result.warnings


def test_resume_keeps_the_identifier_offset(tiny_sd1, dog_photos, tmp_path):
    common = dict(max_steps=4, checkpoint_every=2, keep_checkpoints=0)
    straight = train(_config(tiny_sd1, dog_photos, tmp_path / "a", **common), callbacks=[])

    class Kill(TrainingCallback):
        def on_step_end(self, run, step):
            if step.step == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_config(tiny_sd1, dog_photos, tmp_path / "b", **common), callbacks=[Kill()])
    resumed = train(_config(tiny_sd1, dog_photos, tmp_path / "b", resume="latest", **common), callbacks=[])
    assert resumed.losses == straight.losses
    a, b = load_pipeline(str(tmp_path / "a")), load_pipeline(str(tmp_path / "b"))
    assert torch.equal(_embeddings(a)[0], _embeddings(b)[0])
