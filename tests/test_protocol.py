"""One wire protocol: every socket.io event the server handles or sends is a model in
`parley.protocol`, the page's JSDoc mirror (`static/protocol.js`) names the same events and fields,
and the page speaks only those events."""

from __future__ import annotations

import ast
import re

import pytest
from pydantic import BaseModel, ValidationError

from parley import protocol
from parley.config import ParleyConfig
from tests.support import ROOT
from tests.support.ingress import local_ingress
from tests.support.network import free_port

SOCKET_IO = {"connect", "disconnect", "connect_error"}
"""socket.io's own events, not the protocol's."""


def typedefs(js: str) -> dict[str, dict[str, str]]:
    """Each JSDoc `@typedef {object} Name` and its properties: {name: {property: type}}."""
    out: dict[str, dict[str, str]] = {}
    for block in re.findall(r"/\*\*(.*?)\*/", js, flags=re.S):
        name = re.search(r"@typedef\s+\{object\}\s+(\w+)", block)
        if name:
            props = re.findall(r"@property\s+\{([^}]*)\}\s+\[?(\w+)\]?", block)
            out[name.group(1)] = {prop: kind for kind, prop in props}
    return out


@pytest.fixture(scope="module")
def page_types() -> dict[str, dict[str, str]]:
    return typedefs((ROOT / "static/protocol.js").read_text())


def test_the_typedef_reader_reads_a_block() -> None:
    assert typedefs("/**\n * x\n * @typedef {object} A\n * @property {string} b\n * @property {number} [c]\n */") == {
        "A": {"b": "string", "c": "number"}
    }


def test_the_server_handles_exactly_the_protocols_page_events() -> None:
    server = local_ingress(ParleyConfig.model_validate({"server": {"port": free_port(), "store": "memory"}}))
    handled = set(server.sio.handlers["/"]) - SOCKET_IO
    assert handled == set(protocol.INBOUND)


def test_the_server_emits_only_protocol_models() -> None:
    """No hand-made event: every `emit` in the server side names its event through a model."""
    for path in sorted((ROOT / "parley").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "emit" and node.args:
                first = node.args[0]
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                assert not isinstance(first, ast.Constant), f"{where} emits {first.value!r} by hand"


def test_the_pages_mirror_names_the_same_events(page_types: dict[str, dict[str, str]]) -> None:
    assert page_types["PageEvents"] == {name: model.__name__ for name, model in protocol.INBOUND.items()}
    assert page_types["ServerEvents"] == {name: model.__name__ for name, model in protocol.OUTBOUND.items()}


def test_the_pages_mirror_names_the_same_fields(page_types: dict[str, dict[str, str]]) -> None:
    models: list[type[BaseModel]] = [*protocol.INBOUND.values(), *protocol.OUTBOUND.values(), protocol.Ack, protocol.TurnInfo]
    for model in models:
        assert model.__name__ in page_types, f"static/protocol.js has no typedef for {model.__name__}"
        assert set(page_types[model.__name__]) == set(model.model_fields), model.__name__


def test_the_page_listens_to_and_sends_only_protocol_events() -> None:
    listened: set[str] = set()
    sent: set[str] = set()
    for path in (ROOT / "static").glob("*.js"):
        js = path.read_text()
        listened |= set(re.findall(r"socket\.on\(\"(\w+)\"", js))
        sent |= set(re.findall(r"(?:emit|send)\(\"(\w+)\"", js))
    assert listened - SOCKET_IO == set(protocol.OUTBOUND), "the page handles every event the server sends, and no other"
    assert sent <= set(protocol.INBOUND), sent - set(protocol.INBOUND)
    assert {"hello", "offer", "talk_start", "talk_end", "text"} <= sent


def test_an_inbound_payload_is_checked_strictly_and_a_stale_field_reads_as_absent() -> None:
    with pytest.raises(ValidationError):
        protocol.HandsFree.model_validate({"enabled": "true"})
    with pytest.raises(ValidationError):
        protocol.Offer.model_validate({"sdp": "v=0"})
    hello = protocol.Hello.model_validate({"session_id": 5, "vision": "yes", "hands_free": True, "extra": 1})
    assert (hello.session_id, hello.vision, hello.hands_free) == (None, None, True)
    assert protocol.Text.model_validate({"text": ["not", "text"]}).text is None


def test_an_outbound_payload_holds_the_fields_that_were_set() -> None:
    assert protocol.State(id="a", state="done").payload() == {"id": "a", "state": "done"}
    assert protocol.Metrics(id="a", asr=None, llm_ttft=0.2).payload() == {"id": "a", "asr": None, "llm_ttft": 0.2}
    assert protocol.TurnStatus(state="speaking").payload() == {"state": "speaking"}
    with pytest.raises(ValidationError):
        protocol.TurnStatus(state="dancing")  # type: ignore[arg-type]
