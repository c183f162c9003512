"""The independent reference for model tests: a ``transformers`` model with the same config and weights as a
fastbert one, eager attention."""
import pytest


def hf_twin(ours, head: str = "BertModel"):
    """``transformers.<head>`` built from ``ours.config`` (fastbert-only keys dropped), ``attn_implementation``
    eager, loaded with ``ours``' weights, in eval mode; skips the test when transformers is missing."""
    transformers = pytest.importorskip("transformers")
    drop = ("backend", "unpad")
    hf_config = transformers.BertConfig(**{k: v for k, v in ours.config.to_dict().items() if k not in drop})
    hf_config._attn_implementation = "eager"
    theirs = getattr(transformers, head)(hf_config).eval()
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected, unexpected
    assert not [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))], missing
    return theirs
