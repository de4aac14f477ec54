"""Tool calling through the official OpenAI Python SDK: forced and named calls
whose arguments validate against the tool's schema (jsonschema as the
independent checker), streamed calls that reassemble to the non-streamed one,
a multi-turn exchange with a tool result, parallel calls, and tool_choice none."""
import json

import jsonschema
import openai
import pytest

from conftest import GEMMA, SMOL

WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 24}},
        "required": ["timezone"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Current time in a timezone",
                                      "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]


def check_calls(choice, allowed=("get_weather", "get_time")):
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert calls, choice
    for c in calls:
        assert c.type == "function" and c.id.startswith("call_")
        assert c.function.name in allowed
        jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])
    return calls


@pytest.mark.parametrize("model", [SMOL, GEMMA, "auto"])
def test_required_call_validates(client, model):
    r = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required",
                                       parallel_tool_calls=False, max_tokens=80, temperature=0)
    assert len(check_calls(r.choices[0])) == 1


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_named_tool_is_the_one_called(client, model):
    r = client.chat.completions.create(
        model=model, messages=ASK, tools=TOOLS, max_tokens=80, temperature=0, parallel_tool_calls=False,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    (call,) = check_calls(r.choices[0], allowed=("get_time",))
    assert call.function.name == "get_time"


def test_streamed_call_reassembles_to_the_same_call(client):
    args = dict(model=SMOL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=80,
                temperature=0, parallel_tool_calls=False)
    plain = client.chat.completions.create(**args).choices[0].message.tool_calls
    calls, finish, content = {}, None, ""
    for chunk in client.chat.completions.create(stream=True, **args):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for tc in delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            if tc.id:
                assert slot["id"] is None, "the id comes once, in the first delta of a call"
                slot["id"] = tc.id
                assert tc.function.name, "the first delta of a call names the function"
            slot["name"] += tc.function.name or "" if tc.id else ""
            slot["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and content == ""
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == \
        [(c.function.name, json.loads(c.function.arguments)) for c in plain]


def test_stream_helper_collects_tool_calls(client):
    with client.chat.completions.stream(model=GEMMA, messages=ASK, tools=TOOLS, tool_choice="required",
                                        parallel_tool_calls=False, max_tokens=80, temperature=0) as s:
        final = s.get_final_completion()
    check_calls(final.choices[0])


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_multi_turn_with_a_tool_result(client, model):
    first = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=80, temperature=0)
    (call,) = check_calls(first.choices[0])
    history = ASK + [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "sky": "clear"})}]
    second = client.chat.completions.create(model=model, messages=history, tools=TOOLS, max_tokens=24,
                                            temperature=0, tool_choice="none")
    choice = second.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert isinstance(choice.message.content, str) and choice.message.content
    assert not choice.message.tool_calls


def test_parallel_calls_each_validate(client):
    r = client.chat.completions.create(
        model=GEMMA, tools=TOOLS, tool_choice="required", max_tokens=160, temperature=0,
        messages=[{"role": "user", "content": "Weather in Paris and the time in Tokyo?"}])
    calls = r.choices[0].message.tool_calls
    assert calls and all(c.function.name in SCHEMAS for c in calls)
    for c in calls:
        jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])


@pytest.mark.parametrize("kwargs, param", [
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": TOOLS, "extra_body": {"guided_regex": "[a-z]+"}}, "guided_regex"),
])
def test_bad_tool_requests_are_400s(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=SMOL, messages=ASK, max_tokens=4, **kwargs)
    assert e.value.body["param"] == param, e.value.body


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_auto_with_a_json_answer_format_gives_a_call_or_that_json(client, model):
    answer = {"type": "object", "properties": {"reply": {"type": "string", "maxLength": 30}},
              "required": ["reply"], "additionalProperties": False}
    for prompt in ["What is the weather in Paris right now?", "Say hello in JSON."]:
        r = client.chat.completions.create(
            model=model, tools=TOOLS, max_tokens=80, temperature=0, parallel_tool_calls=False,
            response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": answer}},
            messages=[{"role": "user", "content": prompt}])
        choice = r.choices[0]
        if choice.message.tool_calls:
            check_calls(choice)
        else:
            assert choice.finish_reason == "stop", choice
            jsonschema.validate(json.loads(choice.message.content), answer)


def test_named_choice_makes_exactly_one_call(client):
    r = client.chat.completions.create(
        model=GEMMA, tools=TOOLS, max_tokens=120, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        messages=[{"role": "user", "content": "Weather in Paris, London and Rome?"}])
    assert len(check_calls(r.choices[0], allowed=("get_weather",))) == 1
