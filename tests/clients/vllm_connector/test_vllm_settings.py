"""Settings and layout checks the connector makes at start, and that importing tierd_client (or
tierd_client.vllm) does not import vLLM."""

from __future__ import annotations

import subprocess
import sys

import pytest
from vllm_fakes import LAYOUT, SPEC

from tierd_client.vllm import ConnectorSettings, TierdConnectorConfigError
from tierd_client.vllm.layout import check_kv_caches, check_page_tokens, order_layers, page_spec


def test_extra_config_is_checked_key_by_key() -> None:
    settings = ConnectorSettings.from_extra_config({"socket": "/tmp/t.sock", "rpc_timeout_s": 1, "local": False})
    assert settings.rpc_timeout_s == 1.0 and settings.local is False and settings.tier == "dram"
    with pytest.raises(TierdConnectorConfigError, match=r"unknown keys \['sockett'\]"):
        ConnectorSettings.from_extra_config({"sockett": "/tmp/t.sock"})
    with pytest.raises(TierdConnectorConfigError, match="tier is 'disk': set one of hbm, dram"):
        ConnectorSettings.from_extra_config({"tier": "disk"})
    with pytest.raises(TierdConnectorConfigError, match="local must be a bool"):
        ConnectorSettings.from_extra_config({"local": "yes"})
    with pytest.raises(TierdConnectorConfigError, match="positive number of seconds"):
        ConnectorSettings.from_extra_config({"retry_after_s": 0})


def test_the_socket_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERD_SOCKET", "/run/x/tierd.sock")
    assert ConnectorSettings().socket == "/run/x/tierd.sock"
    monkeypatch.delenv("TIERD_SOCKET")
    assert ConnectorSettings().socket == "/run/tierd/tierd.sock"


def test_page_tokens_other_than_the_block_size_say_what_to_set() -> None:
    check_page_tokens(None, 32)
    check_page_tokens(32, 32)
    with pytest.raises(TierdConnectorConfigError, match="start vLLM with --block-size 64"):
        check_page_tokens(64, 32)


def test_layout_names_the_engine_and_layouts_page_apart() -> None:
    assert LAYOUT.name == "vllm-0.32.0/cpu_attn-vec/float32/b4"
    amx = page_spec("tiny@test", LAYOUT.__class__("0.32.0", "cpu_attn-amx", "float32", 4), 2, 2, 8)
    assert amx.layout != SPEC.layout and amx.page_bytes == SPEC.page_bytes
    with pytest.raises(TierdConnectorConfigError, match="set kv_connector_extra_config.model_id"):
        page_spec("/very/long/path/" * 30, LAYOUT, 2, 2, 8)


def test_kv_caches_of_another_shape_or_dtype_are_refused() -> None:
    good = (32, 2, 4, 16)
    assert check_kv_caches(SPEC, ["l0", "l1"], [good, good], ["torch.float32"] * 2) == 32
    with pytest.raises(TierdConnectorConfigError, match="registered 1 KV cache layers"):
        check_kv_caches(SPEC, ["l0"], [good], ["torch.float32"])
    with pytest.raises(TierdConnectorConfigError, match=r"layer l1 has shape \(32, 4, 2, 16\)"):
        check_kv_caches(SPEC, ["l0", "l1"], [good, (32, 4, 2, 16)], ["torch.float32"] * 2)
    with pytest.raises(TierdConnectorConfigError, match="set --kv-cache-dtype auto"):
        check_kv_caches(SPEC, ["l0", "l1"], [good, good], ["torch.float32", "torch.bfloat16"])


def test_layers_are_paged_in_layer_index_order() -> None:
    names = {"model.layers.10.attn": 0, "model.layers.2.attn": 0, "model.layers.1.attn": 0}
    assert order_layers(names, lambda name: name.split(".")[2]) == [
        "model.layers.1.attn", "model.layers.2.attn", "model.layers.10.attn"]


def test_importing_tierd_client_or_its_vllm_package_does_not_import_vllm() -> None:
    code = ("import sys, tierd_client, tierd_client.vllm; "
            "assert not any(m == 'vllm' or m.startswith('vllm.') for m in sys.modules), 'vllm imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
