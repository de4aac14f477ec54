"""Structured outputs through the official OpenAI Python SDK: response_format
(JSON mode, JSON schema, `.parse()` with Pydantic), vLLM's guided fields, and
a property test: generated JSON schemas x both models, every completed output
validated by `jsonschema`, an independent checker."""
import asyncio
import json
import os
import re

import jsonschema
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from conftest import GEMMA, SMOL

MODELS = [SMOL, GEMMA]


class City(BaseModel):
    name: str = Field(max_length=24)
    population: int = Field(ge=0, le=100_000_000)
    coastal: bool


@pytest.mark.parametrize("model", MODELS)
def test_parse_returns_a_pydantic_object(client, model):
    r = client.chat.completions.parse(
        model=model, response_format=City, max_tokens=80, temperature=0,
        messages=[{"role": "user", "content": "Describe Lisbon as JSON: name, population, coastal."}])
    choice = r.choices[0]
    assert choice.finish_reason == "stop", choice
    assert isinstance(choice.message.parsed, City)
    assert City.model_validate_json(choice.message.content) == choice.message.parsed


@pytest.mark.parametrize("model", MODELS + ["auto"])
def test_json_mode_gives_an_object(client, model):
    r = client.chat.completions.create(
        model=model, max_tokens=96, temperature=0, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give me a JSON object describing a cat."}])
    text = r.choices[0].message.content
    assert text.startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_streamed_constrained_output_matches_the_schema(client):
    schema = {"type": "object", "properties": {"colors": {"type": "array", "maxItems": 3,
              "items": {"enum": ["red", "green", "blue"]}}}, "required": ["colors"],
              "additionalProperties": False}
    stream = client.chat.completions.create(
        model=SMOL, max_tokens=40, temperature=0, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "colors", "schema": schema}},
        messages=[{"role": "user", "content": "List some colors."}])
    text, finish = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "stop"
    jsonschema.validate(json.loads(text), schema)


def test_vllm_guided_fields(client, http):
    r = client.chat.completions.create(
        model=GEMMA, max_tokens=8, temperature=0, extra_body={"guided_choice": ["yes", "no"]},
        messages=[{"role": "user", "content": "Is water wet?"}])
    assert r.choices[0].message.content in ("yes", "no")
    r = client.completions.create(
        model=SMOL, prompt="The year is", max_tokens=8, temperature=0,
        extra_body={"guided_regex": r" (19|20)[0-9]{2}"})
    assert re.fullmatch(r" (19|20)[0-9]{2}", r.choices[0].text)
    r = client.chat.completions.create(
        model=SMOL, max_tokens=24, temperature=0,
        extra_body={"structured_outputs": {"grammar": 'start: "A" ("B" | "C")+ "."'}},
        messages=[{"role": "user", "content": "Spell something."}])
    assert re.fullmatch(r"A[BC]+\.", r.choices[0].message.content)
    # The same grammar as GBNF (llama.cpp's EBNF, which vLLM takes too).
    r = client.chat.completions.create(
        model=GEMMA, max_tokens=24, temperature=0,
        extra_body={"guided_grammar": 'root ::= "A" letter+ "."\nletter ::= [BC]'},
        messages=[{"role": "user", "content": "Spell something."}])
    assert re.fullmatch(r"A[BC]+\.", r.choices[0].message.content)


@pytest.mark.parametrize("kwargs, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wizard"}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}},
     "response_format.json_schema.name"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"extra_body": {"guided_regex": "(unclosed"}}, "guided_regex"),
    ({"extra_body": {"guided_grammar": "root ::= \"a"}}, "guided_grammar"),
    ({"response_format": {"type": "json_object"}, "extra_body": {"guided_choice": ["a"]}}, "guided_choice"),
])
@pytest.mark.parametrize("model", [SMOL, "auto"])
def test_invalid_constraints_are_400s_naming_the_field(client, kwargs, param, model):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=4, **kwargs)
    assert e.value.body["param"] == param, e.value.body


# Bounded schemas, so that a small model's output always ends: short strings,
# few items, ranged integers, enums.
LEAF = st.one_of(
    st.builds(lambda n: {"type": "string", "maxLength": n}, st.integers(1, 12)),
    st.builds(lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
              st.integers(-1000, 1000), st.integers(0, 5000)),
    st.just({"type": "boolean"}),
    st.builds(lambda vals: {"enum": vals}, st.lists(st.sampled_from(["alpha", "beta", "gamma", 1, 2, True, None]),
                                                       min_size=1, max_size=4, unique=True)),
    st.just({"type": "string", "pattern": "^[a-z]{1,6}$"}),
    st.builds(lambda lo: {"type": "number", "minimum": lo, "maximum": lo + 10}, st.integers(-50, 50)),
    st.just({"type": "null"}),
)
KEY = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)


def objects(children):
    return st.builds(
        lambda props, req_mask: {
            "type": "object", "properties": props, "additionalProperties": False,
            "required": [k for k, r in zip(props, req_mask) if r]},
        st.dictionaries(KEY, children, min_size=1, max_size=3),
        st.lists(st.booleans(), min_size=3, max_size=3))


def arrays(children):
    return st.builds(lambda items, n: {"type": "array", "items": items, "maxItems": n}, children, st.integers(1, 3))


SCHEMAS = st.recursive(LEAF, lambda c: st.one_of(objects(c), arrays(c)), max_leaves=6).map(
    lambda s: s if s.get("type") == "object" else {"type": "object", "properties": {"value": s},
                                                   "required": ["value"], "additionalProperties": False})

N_SCHEMAS = int(os.environ.get("SCHEMA_CASES", "200"))


def test_generated_schemas_validate_on_both_models(aclient):
    # Draw the schemas first (hypothesis), then serve them concurrently.
    drawn = []

    @settings(max_examples=N_SCHEMAS, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(schema=SCHEMAS)
    def collect(schema):
        drawn.append(schema)

    collect()
    assert len(drawn) >= N_SCHEMAS // 2
    cases = [(s, MODELS[i % 2], 3 if i % 10 == 0 else 1) for i, s in enumerate(drawn)]
    results = []

    async def one(sem, schema, model, n):
        async with sem:
            r = await aclient.chat.completions.create(
                model=model, max_tokens=96, temperature=0.8, seed=len(results), n=n,
                response_format={"type": "json_schema", "json_schema": {"name": "case", "schema": schema}},
                messages=[{"role": "user", "content": "Fill in this JSON with plausible values."}])
            for c in r.choices:
                results.append((schema, model, c.finish_reason, c.message.content))

    async def main():
        sem = asyncio.Semaphore(16)
        await asyncio.gather(*(one(sem, *c) for c in cases))

    asyncio.run(main())
    completed = [r for r in results if r[2] == "stop"]
    for schema, model, _, text in completed:
        try:
            jsonschema.validate(json.loads(text), schema)
        except Exception as e:  # noqa: BLE001 - report the case
            raise AssertionError(f"{model}: {text!r} does not match {json.dumps(schema)}: {e}") from e
    # The grammar guarantees validity once complete; nearly all complete.
    assert len(completed) >= 0.9 * len(results), (len(completed), len(results))
    print(f"{len(completed)}/{len(results)} constrained outputs completed and validated")


def test_guided_json_and_structured_outputs_objects(client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    for extra in [{"guided_json": schema}, {"guided_json": json.dumps(schema)},
                  {"structured_outputs": {"json": schema}}]:
        r = client.chat.completions.create(model=SMOL, max_tokens=16, temperature=0, extra_body=extra,
                                           messages=[{"role": "user", "content": "Is the sky blue?"}])
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    r = client.chat.completions.create(model=GEMMA, max_tokens=48, temperature=0,
                                       extra_body={"structured_outputs": {"json_object": True}},
                                       messages=[{"role": "user", "content": "A JSON object about a dog."}])
    assert r.choices[0].message.content.startswith("{")
