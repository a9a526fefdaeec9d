#!/usr/bin/env python3
"""Structured outputs and tool calls through the official `openai` SDK against a running
`tokenfab serve` (the default 135M model is enough: the grammar, not the model, makes the output
valid). Asserts:

- `chat.completions.parse` with a pydantic model returns a parsed object;
- a suite of JSON schemas (nested objects, arrays with min/max items, enums, const, anyOf,
  nullable fields, string patterns and lengths, number ranges, additionalProperties false,
  $defs, prefixItems, formats): every output at temperature 0 and 1 validates with `jsonschema`;
- `json_object` outputs always parse (one cut off by `max_tokens` is a valid JSON prefix: JSON
  mode bounds no size, and a 135M model at temperature 0 loops; most must finish);
- `regex` and `choice` outputs always match;
- tools: `required`, a named function, streamed (deltas put together by the SDK's stream
  helper) and a tool-result round trip; every call's arguments validate against its schema.

    python3 scripts/structured-check.py --base-url http://127.0.0.1:8000/v1 [--api-key KEY]

Requests run concurrently (--concurrency), so constrained rows share batches with each other.
Exits 0 when every check passes; prints what failed otherwise.
"""

import argparse
import concurrent.futures
import json
import re
import sys
import time

try:
    import jsonschema
    import openai
    import pydantic
except ImportError as e:
    sys.exit(
        f"structured-check: {e.name} is missing: python3 -m pip install openai jsonschema pydantic"
    )

SHORT = {"type": "string", "minLength": 1, "maxLength": 24}

# (name, prompt, schema). Strings carry a maxLength and arrays a maxItems so that every output
# fits max_tokens whatever the model likes to write.
SCHEMAS = [
    ("person", "Describe a person.", {
        "type": "object",
        "properties": {"name": SHORT, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"], "additionalProperties": False}),
    ("address", "Give a postal address in France.", {
        "type": "object",
        "properties": {
            "street": SHORT, "city": SHORT,
            "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            "country": {"const": "FR"}},
        "required": ["street", "city", "zip", "country"], "additionalProperties": False}),
    ("tags", "List tags for a blog post about cooking.", {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 12},
                                "minItems": 1, "maxItems": 4}},
        "required": ["tags"], "additionalProperties": False}),
    ("color", "What color is the sky?", {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue", "black", "white"]}},
        "required": ["color"]}),
    ("version", "Report the API version.", {
        "type": "object",
        "properties": {"version": {"const": "v1"}, "ok": {"type": "boolean"}},
        "required": ["version", "ok"], "additionalProperties": False}),
    ("any_of", "Give an id, a number or a short code.", {
        "type": "object",
        "properties": {"id": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9999},
                                        {"type": "string", "pattern": "^[A-Z]{3}[0-9]{2}$"}]}},
        "required": ["id"], "additionalProperties": False}),
    ("nullable", "Name a person and their middle name, if any.", {
        "type": "object",
        "properties": {"first": SHORT,
                       "middle": {"type": ["string", "null"], "maxLength": 16}},
        "required": ["first", "middle"], "additionalProperties": False}),
    ("phone", "Give a phone number.", {
        "type": "object",
        "properties": {"phone": {"type": "string", "pattern": "^\\+[0-9]{8,12}$"}},
        "required": ["phone"], "additionalProperties": False}),
    ("weather", "Report today's weather.", {
        "type": "object",
        "properties": {"celsius": {"type": "integer", "minimum": -50, "maximum": 60},
                       "humidity": {"type": "integer", "minimum": 0, "maximum": 100},
                       "wind": {"type": "integer", "exclusiveMinimum": 0, "maximum": 200}},
        "required": ["celsius", "humidity", "wind"], "additionalProperties": False}),
    ("optional", "Describe a book.", {
        "type": "object",
        "properties": {"title": SHORT, "pages": {"type": "integer", "minimum": 1,
                                                 "maximum": 2000},
                       "subtitle": SHORT},
        "required": ["title"], "additionalProperties": False}),
    ("todo", "Write a short todo list.", {
        "type": "object",
        "properties": {"items": {"type": "array", "minItems": 2, "maxItems": 3, "items": {
            "type": "object",
            "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 99},
                           "done": {"type": "boolean"}},
            "required": ["id", "done"], "additionalProperties": False}}},
        "required": ["items"], "additionalProperties": False}),
    ("date", "When is the next holiday?", {
        "type": "object",
        "properties": {"holiday": SHORT, "date": {"type": "string", "format": "date"}},
        "required": ["holiday", "date"], "additionalProperties": False}),
    ("nested", "Describe a company and its CEO.", {
        "type": "object",
        "properties": {"company": {
            "type": "object",
            "properties": {"name": SHORT, "ceo": {
                "type": "object",
                "properties": {"name": SHORT,
                               "since": {"type": "integer", "minimum": 1950, "maximum": 2030}},
                "required": ["name", "since"], "additionalProperties": False}},
            "required": ["name", "ceo"], "additionalProperties": False}},
        "required": ["company"], "additionalProperties": False}),
    ("point", "Give a point on a plane.", {
        "type": "object",
        "properties": {"xy": {"type": "array", "prefixItems": [
            {"type": "integer", "minimum": -100, "maximum": 100},
            {"type": "integer", "minimum": -100, "maximum": 100}], "items": False,
            "minItems": 2}},
        "required": ["xy"], "additionalProperties": False}),
    ("dice", "Roll two dice.", {
        "type": "object",
        "properties": {"rolls": {"type": "array", "items": {"enum": [1, 2, 3, 4, 5, 6]},
                                 "minItems": 2, "maxItems": 2}},
        "required": ["rolls"], "additionalProperties": False}),
    ("code", "Make up a product code.", {
        "type": "object",
        "properties": {"code": {"type": "string", "minLength": 3, "maxLength": 8,
                                "pattern": "^[A-Za-z0-9]+$"}},
        "required": ["code"], "additionalProperties": False}),
    ("shape", "Describe a circle or a square.", {
        "type": "object",
        "properties": {"shape": {"anyOf": [
            {"type": "object", "properties": {"kind": {"const": "circle"},
                                              "radius": {"type": "integer", "minimum": 1,
                                                         "maximum": 50}},
             "required": ["kind", "radius"], "additionalProperties": False},
            {"type": "object", "properties": {"kind": {"const": "square"},
                                              "side": {"type": "integer", "minimum": 1,
                                                       "maximum": 50}},
             "required": ["kind", "side"], "additionalProperties": False}]}},
        "required": ["shape"], "additionalProperties": False}),
    ("defs", "Give two cities.", {
        "$defs": {"city": {"type": "object", "properties": {"name": SHORT},
                           "required": ["name"], "additionalProperties": False}},
        "type": "object",
        "properties": {"from": {"$ref": "#/$defs/city"}, "to": {"$ref": "#/$defs/city"}},
        "required": ["from", "to"], "additionalProperties": False}),
    ("review", "Review a restaurant.", {
        "type": "object",
        "properties": {"stars": {"type": "integer", "minimum": 1, "maximum": 5},
                       "summary": {"type": ["string", "null"], "maxLength": 40},
                       "recommend": {"type": "boolean"}},
        "required": ["stars", "summary", "recommend"], "additionalProperties": False}),
    ("matrix", "Write a 2x2 matrix of small numbers.", {
        "type": "object",
        "properties": {"m": {"type": "array", "minItems": 2, "maxItems": 2, "items": {
            "type": "array", "minItems": 2, "maxItems": 2,
            "items": {"type": "integer", "minimum": 0, "maximum": 9}}}},
        "required": ["m"], "additionalProperties": False}),
    ("fruits", "Name some fruits.", {
        "type": "array", "items": {"type": "string", "maxLength": 12},
        "minItems": 1, "maxItems": 3}),
    ("rating", "Rate this movie from 0 to 10.", {
        "type": "number", "minimum": 0, "maximum": 10, "multipleOf": 0.5}),
    ("username", "Pick a username.", {
        "type": "string", "pattern": "^[a-z][a-z0-9_]{2,11}$"}),
]

REGEXES = [
    ("Give a date.", r"[0-9]{4}-[0-9]{2}-[0-9]{2}"),
    ("Give a time.", r"([01][0-9]|2[0-3]):[0-5][0-9]"),
    ("Name an animal.", r"[A-Z][a-z]{2,10}"),
    ("Give an email address.", r"[a-z]{1,10}@[a-z]{1,10}\.(com|org)"),
]

CHOICES = [
    ("Is this review positive or negative? 'I loved it.'", ["positive", "negative"]),
    ("Which is bigger, a cat or an elephant?", ["cat", "elephant", "same"]),
    ("Pick a weekday.", ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]),
]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30},
                           "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": False},
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "pattern": "^[A-Z]{3,4}$"}},
            "required": ["zone"], "additionalProperties": False},
    },
}
TOOLS = [WEATHER, TIME]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


JSON_SYSTEM = {"role": "system",
               "content": "You reply with one short JSON object with at most three keys."}


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=30)
    country: str = pydantic.Field(max_length=30)
    population: int = pydantic.Field(ge=0, le=50_000_000)
    capital: bool


def json_prefix_ok(s):
    """Whether `s` is valid JSON or a prefix of valid JSON (output cut off by max_tokens)."""
    pos = 0

    class End(Exception):
        pass

    def ws():
        nonlocal pos
        while pos < len(s) and s[pos] in " \t\n\r":
            pos += 1
        if pos == len(s):
            raise End

    def lit(word):
        nonlocal pos
        for ch in word:
            if pos == len(s):
                raise End
            if s[pos] != ch:
                raise ValueError(f"bad literal at {pos}")
            pos += 1

    def string():
        nonlocal pos
        lit('"')
        while True:
            if pos == len(s):
                raise End
            ch = s[pos]
            pos += 1
            if ch == '"':
                return
            if ch == "\\":
                if pos == len(s):
                    raise End
                pos += 1

    def number():
        nonlocal pos
        m = re.match(r"-?[0-9]*\.?[0-9]*([eE][-+]?[0-9]*)?", s[pos:])
        if not m.group(0):
            raise ValueError(f"bad number at {pos}")
        pos += len(m.group(0))
        if pos == len(s):
            raise End

    def value():
        ws()
        ch = s[pos]
        if ch == "{":
            lit("{")
            ws()
            if s[pos] == "}":
                lit("}")
                return
            while True:
                ws()
                string()
                ws()
                lit(":")
                value()
                ws()
                if s[pos] == "}":
                    lit("}")
                    return
                lit(",")
        elif ch == "[":
            lit("[")
            ws()
            if s[pos] == "]":
                lit("]")
                return
            while True:
                value()
                ws()
                if s[pos] == "]":
                    lit("]")
                    return
                lit(",")
        elif ch == '"':
            string()
        elif ch in "tfn":
            lit({"t": "true", "f": "false", "n": "null"}[ch])
        else:
            number()

    try:
        value()
        return s[pos:].strip() == ""
    except End:
        return True
    except ValueError:
        return False


def user(text):
    return [{"role": "user", "content": text}]


def check_call(call, failures, what):
    name = call.function.name
    if name not in PARAMS:
        failures.append(f"{what}: unknown function {name!r}")
        return
    try:
        jsonschema.validate(json.loads(call.function.arguments), PARAMS[name])
    except (ValueError, jsonschema.ValidationError) as e:
        failures.append(f"{what}: {name} arguments {call.function.arguments!r}: {e}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--api-key", default="none")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=320)
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0,
                           timeout=600)
    model = client.models.list().data[0].id
    failures = []
    started = time.time()
    mt = args.max_tokens

    # 1. The SDK's own structured outputs: a pydantic model in, a parsed object out.
    parsed = client.chat.completions.parse(
        model=model, messages=user("Describe Paris as a city."), response_format=City,
        max_tokens=mt, temperature=0)
    city = parsed.choices[0].message.parsed
    if not isinstance(city, City):
        failures.append(f"parse: no parsed City: {parsed}")
    else:
        print(f"parse: {city!r}")

    # 2. Schemas, json_object, regex and choice at temperature 0 and 1, all at once.
    jobs = []
    for temp in (0.0, 1.0):
        for name, prompt, schema in SCHEMAS:
            rf = {"type": "json_schema",
                  "json_schema": {"name": name, "schema": schema, "strict": True}}
            jobs.append((f"schema {name} t={temp}", dict(
                messages=user(prompt + " Answer in JSON."), response_format=rf,
                temperature=temp), ("schema", schema)))
        for i, prompt in enumerate(["Describe a dog.", "What is the capital of Italy?",
                                    "Give me a user record."]):
            for seed in (1, 2) if temp else (1,):
                jobs.append((f"json_object {i} t={temp} seed={seed}", dict(
                    messages=[JSON_SYSTEM] + user(prompt),
                    response_format={"type": "json_object"}, temperature=temp, seed=seed),
                    ("json_object", None)))
        for prompt, rx in REGEXES:
            jobs.append((f"regex {rx} t={temp}", dict(
                messages=user(prompt), extra_body={"structured_outputs": {"regex": rx}},
                temperature=temp), ("regex", rx)))
        for prompt, options in CHOICES:
            jobs.append((f"choice {options} t={temp}", dict(
                messages=user(prompt), extra_body={"structured_outputs": {"choice": options}},
                temperature=temp), ("choice", options)))

    def run(job):
        what, kw, check = job
        kw = {"max_tokens": mt, "seed": 7, **kw}
        r = client.chat.completions.create(model=model, **kw)
        return what, r.choices[0], check

    validator_format = jsonschema.FormatChecker()
    json_objects = [0, 0]
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        for what, choice, (kind, arg) in pool.map(run, jobs):
            text = choice.message.content or ""
            if kind == "json_object":
                json_objects[choice.finish_reason == "stop"] += 1
                if choice.finish_reason == "length":
                    if not json_prefix_ok(text):
                        failures.append(f"{what}: cut off, and not a JSON prefix: {text!r}")
                    continue
            if choice.finish_reason != "stop":
                failures.append(f"{what}: finish_reason {choice.finish_reason}: {text!r}")
                continue
            try:
                if kind == "schema":
                    jsonschema.validate(json.loads(text), arg, format_checker=validator_format)
                elif kind == "json_object":
                    if not isinstance(json.loads(text), dict):
                        raise ValueError("not an object")
                elif kind == "regex":
                    if not re.fullmatch(arg, text):
                        raise ValueError("does not match")
                elif text not in arg:
                    raise ValueError("not one of the choices")
            except (ValueError, jsonschema.ValidationError) as e:
                failures.append(f"{what}: {text!r}: {e}")
    print(f"{len(jobs)} constrained outputs checked; json_object: {json_objects[1]} finished, "
          f"{json_objects[0]} cut off by max_tokens")
    if json_objects[1] < json_objects[0]:
        failures.append(f"json_object: most outputs were cut off: {json_objects}")

    # 3. Tools.
    req = client.chat.completions.create(
        model=model, messages=user("What is the weather in Paris?"), tools=TOOLS,
        tool_choice="required", parallel_tool_calls=False, max_tokens=mt, temperature=0)
    msg, finish = req.choices[0].message, req.choices[0].finish_reason
    if len(msg.tool_calls or []) != 1 or finish != "tool_calls":
        failures.append(f"required: no tool call ({finish}): {msg}")
    for c in msg.tool_calls or []:
        check_call(c, failures, "required")
    print(f"required: {[(c.function.name, c.function.arguments) for c in msg.tool_calls or []]}")

    named = client.chat.completions.create(
        model=model, messages=user("What time is it in Tokyo?"), tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=mt, temperature=1.0, seed=3)
    calls = named.choices[0].message.tool_calls or []
    if len(calls) != 1 or calls[0].function.name != "get_time":
        failures.append(f"named: expected one get_time call: {named.choices[0].message}")
    for c in calls:
        check_call(c, failures, "named")

    # Streamed: the SDK's stream helper puts the deltas together.
    with client.chat.completions.stream(
            model=model, messages=user("Weather in Rome and the time in Rome?"), tools=TOOLS,
            tool_choice="required", parallel_tool_calls=False, max_tokens=mt,
            temperature=1.0, seed=5) as stream:
        deltas = sum(1 for ev in stream if ev.type == "tool_calls.function.arguments.delta")
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    if not calls or final.choices[0].finish_reason != "tool_calls" or deltas < 2:
        failures.append(f"streamed: {deltas} argument deltas, {final.choices[0]}")
    for c in calls:
        check_call(c, failures, "streamed")
    print(f"streamed: {deltas} argument deltas -> "
          f"{[(c.function.name, c.function.arguments) for c in calls]}")

    # A round trip: the call, its result, and the model's next turn.
    history = user("What is the weather in Paris?") + [
        msg.model_dump(exclude_none=True, include={"role", "content", "tool_calls"}),
        {"role": "tool", "tool_call_id": (msg.tool_calls or [None])[0].id if msg.tool_calls
         else "none", "content": json.dumps({"celsius": 21, "sky": "clear"})},
    ]
    after = client.chat.completions.create(
        model=model, messages=history, tools=TOOLS, max_tokens=64, temperature=0)
    last = after.choices[0].message
    if not (last.content or last.tool_calls):
        failures.append(f"round trip: empty answer: {after}")
    for c in last.tool_calls or []:
        check_call(c, failures, "round trip")
    print(f"round trip: {last.content!r} {last.tool_calls}")

    print(f"structured-check: {time.time() - started:.1f} s")
    if failures:
        print(f"FAILED ({len(failures)}):")
        for f in failures:
            print(f"  {f}")
        return 1
    print("structured-check: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
