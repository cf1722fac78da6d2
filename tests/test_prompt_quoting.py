"""quote_free_text: any text typed as prompt=... reaches the config unchanged through Hydra's parser."""
from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from conftest import compose_config
from text_ldm.utils.cli import quote_free_text

TEXTS = [
    "She has blond hair, and wears eyeglasses.",
    "She's smiling.",
    'He said: "hi", then left.',
    "a [red] (hat) = fine; 100% {ok}",
    "Zoë — café",
    "a {man|woman:0.3} with glasses",
    "This man smiles.:0.7 | This woman wears a hat.:0.3",
    "back\\slash, trailing\\",
    "quote after backslash \\' and \\\\' here",
    "' leading apostrophe",
    "key=value, other=thing",
    "",
    "tab\tand\nnewline",
]
INTERPOLATING = ["${oops}", "cost: $5 ${x.y} \\${z}", "\\\\${w}"]  # OmegaConf would resolve these


@pytest.mark.parametrize("text", TEXTS)
def test_rewrite_round_trips_through_hydras_parser(text):
    (arg,) = quote_free_text([f"prompt={text}"], ["prompt"])
    assert OverridesParser.create().parse_override(arg).value() == text


@pytest.mark.parametrize("text", TEXTS + INTERPOLATING)
def test_rewritten_prompts_compose_to_the_text(text):
    args = quote_free_text([f"prompt={text}", f"negative_prompt={text}", "ckpt=x.ckpt"], ["prompt", "negative_prompt"])
    cfg = compose_config("sample", args)
    assert cfg.prompt == text and cfg.negative_prompt == text


def test_plus_forms_other_keys_null_and_hydra_quoted_values():
    args = ["+prompt=a, b", "++negative_prompt=it's", "sampler=ddim", "prompt=null", "ckpt=a,b",
            'prompt="This {man|woman:0.3} has blond hair."']
    out = quote_free_text(args, ["prompt", "negative_prompt"])
    parser = OverridesParser.create()
    assert parser.parse_override(out[0]).value() == "a, b" and out[0].startswith("+prompt=")
    assert parser.parse_override(out[1]).value() == "it's" and out[1].startswith("++negative_prompt=")
    assert out[2:5] == ["sampler=ddim", "prompt=null", "ckpt=a,b"]  # not free text, or Hydra's null
    assert out[5] == 'prompt="This {man|woman:0.3} has blond hair."'  # already quoted the Hydra way: as is
    assert parser.parse_override(out[5]).value() == "This {man|woman:0.3} has blond hair."
