"""``tierd_client.hf`` exports both parts' public names lazily: each resolves to its defining
module's object on first use, and importing the package loads neither torch nor transformers."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("transformers")


def test_every_public_name_of_both_parts_is_exported_lazily() -> None:
    code = ("import sys, tierd_client.hf as hf\n"
            "assert not {'torch', 'transformers'} & set(sys.modules), 'imported too early'\n"
            "import tierd_client.hf.paged as paged, tierd_client.hf.generation as generation\n"
            "missing = sorted(set(paged.__all__) - set(hf.__all__))\n"
            "assert not missing, missing\n"
            "for name in hf.__all__:\n"
            "    assert getattr(hf, name) is not None, name\n"
            "assert hf.PagedWorker is paged.PagedWorker and hf.ATTENTION_NAME == 'tierd_paged'\n"
            "assert hf.tiered_generation is generation.tiered_generation\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_an_unknown_name_is_an_attribute_error() -> None:
    import tierd_client.hf as hf

    with pytest.raises(AttributeError, match="no attribute 'PagedThing'"):
        hf.PagedThing  # noqa: B018
