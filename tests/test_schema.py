"""`dnetc schema`: the JSON Schema of a validated spec, and `--json`'s `spec` follows it."""

from __future__ import annotations

import json

import pytest

from dnetc import compiler, dsl

jsonschema = pytest.importorskip("jsonschema")


def test_schema_command_prints_the_models_schema(dnetc):
    result = dnetc("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema == dsl.schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(schema["$defs"]) >= {"DenseBlock", "Transition", "Stem", "Head", "Conv", "Input"}
    growth = schema["$defs"]["DenseBlock"]["properties"]["growth"]
    assert growth["exclusiveMinimum"] == 0 and "growth rate" in growth["description"]


@pytest.mark.parametrize("name", dsl.zoo_names())
def test_every_zoo_spec_follows_the_schema_and_validates_back(name):
    network = dsl.load(name)
    data = network.model_dump(mode="json")
    jsonschema.validate(data, dsl.schema())
    again = dsl.Network.model_validate(data)
    a, b = compiler.build_graph(network), compiler.build_graph(again)
    assert (a.graph["params"], a.graph["macs"]) == (b.graph["params"], b.graph["macs"])


def test_json_report_carries_the_spec(dnetc):
    result = dnetc("densenet_bc_100_12", "--json")
    spec = json.loads(result.stdout)["spec"]
    jsonschema.validate(spec, dsl.schema())
    assert [p["kind"] for p in spec["parts"]] == ["stem", "dense", "transition", "dense", "transition", "dense", "head"]


def test_schema_rejects_what_validation_rejects():
    data = dsl.load("densenet_bc_100_12").model_dump(mode="json")
    data["parts"][1]["growth"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, dsl.schema())
    data["parts"][1]["growth"] = 12
    data["parts"][1]["grwoth"] = 12
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, dsl.schema())
