import hashlib

import pytest

from jobs.kinds import KINDS, RunContext
from jobs.kinds.hash import HashInput


def reference_hash(data: str, iterations: int) -> str:
    """Written independently of jobs.kinds.hash, straight from API.md."""
    h = hashlib.sha256(data.encode("utf-8")).hexdigest()
    for i in range(iterations):
        h = hashlib.sha256((h + ":" + str(i)).encode("utf-8")).hexdigest()
    return h


KNOWN_VECTORS = [
    # Fixed outputs of the original backend's compute_work, recorded once; a change to the kind breaks them.
    ("hello", 1000, "1a95c960fe725fd7966a330d086667bfb756e49b60d5b253469e8a5752353a09"),
    ("test", 1, "6f6437c54e4c3ba9ba4c1470e3d67eae0d4c70b889f878fcaf78fee21461e95f"),
    ("Jobsite", 100000, "34fb76b9780fa06d9b6c2e9a1d45d556faa97382003d7f073ac562a41efe4e4e"),
]


@pytest.mark.parametrize("data,iterations,expected", KNOWN_VECTORS)
def test_hash_known_vectors(data: str, iterations: int, expected: str) -> None:
    result = KINDS["hash"].run({"data": data, "iterations": iterations}, RunContext(owner_id=0, job_id="t"))
    assert result["output_hash"] == expected


@pytest.mark.parametrize(
    "payload,field",
    [
        ({"data": "", "iterations": 1}, "data"),
        ({"data": "   ", "iterations": 1}, "data"),
        ({"data": "a" * 10001}, "data"),
        ({"data": "x", "iterations": 0}, "iterations"),
        ({"data": "x", "iterations": 1_000_001}, "iterations"),
        ({"data": "x", "iterations": "many"}, "iterations"),
        ({"iterations": 5}, "data"),
    ],
)
def test_hash_input_bounds(payload: dict, field: str) -> None:
    serializer = HashInput(data=payload)
    assert not serializer.is_valid()
    assert field in serializer.errors


def test_hash_keeps_whitespace_and_defaults_iterations() -> None:
    serializer = HashInput(data={"data": " padded "})
    assert serializer.is_valid(), serializer.errors
    assert serializer.validated_data == {"data": " padded ", "iterations": 1000}
