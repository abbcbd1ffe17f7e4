"""kiln's gRPC endpoint as the official Python client (tritonclient[grpc]) sees it.

Run by tests/it/clients.rs against a real kiln server that serves "mlp" (6 inputs, 3
classes) and "tab" (features a, b, color):

    python tritonclient_grpc.py HOST:PORT EXPECTED_JSON

EXPECTED_JSON holds the rows sent and the probabilities kiln's REST V2 answered for them:
{"rows": [[...6 floats...], ...], "probabilities": [[...3 floats...], ...]}.
Exits non-zero (with the reason) on the first check that fails.
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def expect_error(call, code, says):
    try:
        call()
    except InferenceServerException as e:
        assert e.status() == code, f"{e.status()} != {code}: {e.message()}"
        assert says in e.message(), f"{e.message()!r} lacks {says!r}"
        return
    raise AssertionError(f"expected {code}")


def main():
    url, expected = sys.argv[1], json.loads(sys.argv[2])
    c = grpcclient.InferenceServerClient(url=url)

    assert c.is_server_live()
    assert c.is_server_ready()
    meta = c.get_server_metadata()
    assert meta.name == "kiln", meta
    assert c.is_model_ready("mlp")
    m = c.get_model_metadata("mlp")
    assert m.name == "mlp" and list(m.versions) == ["1"], m
    assert [i.name for i in m.inputs] == ["input"], m
    assert [o.name for o in m.outputs] == ["probabilities", "label"], m
    assert list(m.inputs[0].shape) == [-1, 6], m

    # FP32 as the client sends it (raw_input_contents), both outputs.
    rows = np.array(expected["rows"], dtype=np.float32)
    x = grpcclient.InferInput("input", list(rows.shape), "FP32")
    x.set_data_from_numpy(rows)
    r = c.infer("mlp", [x], request_id="py-1")
    probs = r.as_numpy("probabilities")
    want = np.array(expected["probabilities"], dtype=np.float32)
    assert probs.shape == want.shape, probs.shape
    assert np.allclose(probs, want, atol=1e-5), (probs, want)
    labels = r.as_numpy("label")
    assert labels.shape == (len(rows),), labels
    assert r.get_response().id == "py-1"
    assert r.get_response().model_version == "1"

    # The same rows as FP16, one output asked for.
    x16 = grpcclient.InferInput("input", list(rows.shape), "FP16")
    x16.set_data_from_numpy(rows.astype(np.float16))
    out = grpcclient.InferRequestedOutput("probabilities")
    r16 = c.infer("mlp", [x16], outputs=[out])
    assert r16.as_numpy("label") is None
    assert np.allclose(r16.as_numpy("probabilities"), want, atol=2e-2)

    # One input per feature; BYTES for the categorical one.
    a = grpcclient.InferInput("a", [2], "FP64")
    a.set_data_from_numpy(np.array([1.0, 2.0]))
    b = grpcclient.InferInput("b", [2], "FP64")
    b.set_data_from_numpy(np.array([3.0, 4.0]))
    color = grpcclient.InferInput("color", [2], "BYTES")
    color.set_data_from_numpy(np.array([b"red", b"blue"], dtype=np.object_))
    rt = c.infer("tab", [a, b, color])
    assert rt.as_numpy("probabilities").shape == (2, 2)
    assert set(rt.as_numpy("label").tolist()) <= {b"no", b"yes"}

    # Errors: status codes and messages that say what and where.
    expect_error(lambda: c.infer("nope", [x]), "StatusCode.NOT_FOUND", "model 'nope' not found")
    bad = grpcclient.InferInput("input", [1, 5], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 5), dtype=np.float32))
    expect_error(lambda: c.infer("mlp", [bad]), "StatusCode.INVALID_ARGUMENT", "expected shape [N, 6]")
    expect_error(lambda: c.get_model_metadata("nope"), "StatusCode.NOT_FOUND", "nope")
    expect_error(lambda: c.get_model_config("mlp"), "StatusCode.UNIMPLEMENTED", "")

    # The repository extension.
    index = c.get_model_repository_index()
    assert sorted(m.name for m in index.models) == ["mlp", "tab"], index
    print("tritonclient[grpc]: every check passed")


if __name__ == "__main__":
    main()
