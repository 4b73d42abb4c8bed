"""The official openai SDK against Bulkhead's OpenAI-compatible endpoint,
unchanged. Run by the Rust test `gateway::the_official_openai_sdk_works_unchanged`,
which starts the server and passes BASE_URL and tenant keys."""
import json
import os

import openai

base = os.environ["BASE_URL"]
client = openai.OpenAI(base_url=base, api_key=os.environ["KEY"], max_retries=0)

# Chat.
r = client.chat.completions.create(model="builtin/scripted", messages=[{"role": "user", "content": "hello there"}])
assert r.choices[0].message.content == "You said: hello there", r
assert r.choices[0].finish_reason == "stop"
assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
print("chat ok")

# Streaming, with usage in the last chunk.
chunks = list(client.chat.completions.create(
    model="builtin/scripted", stream=True, stream_options={"include_usage": True},
    messages=[{"role": "user", "content": "stream me"}]))
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text == "You said: stream me", text
assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
print("stream ok")

# Tool calls: the model asks, the app runs the tool, the model answers.
tools = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
messages = [{"role": "user", "content": 'call get_weather {"city": "Paris"}'}]
r = client.chat.completions.create(model="builtin/scripted", messages=messages, tools=tools)
call = r.choices[0].message.tool_calls[0]
assert r.choices[0].finish_reason == "tool_calls", r
assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
messages.append(r.choices[0].message.model_dump(exclude_none=True))
messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"})
r = client.chat.completions.create(model="builtin/scripted", messages=messages, tools=tools)
assert "sunny, 21 C" in r.choices[0].message.content, r
# And streamed: the tool call arrives in deltas.
streamed = list(client.chat.completions.create(model="builtin/scripted", messages=messages[:1], tools=tools, stream=True))
args = "".join(tc.function.arguments or "" for c in streamed if c.choices for tc in (c.choices[0].delta.tool_calls or []))
assert json.loads(args) == {"city": "Paris"}, args
print("tools ok")

ids = [m.id for m in client.models.list()]
assert "builtin/scripted" in ids and "gpt-4o" in ids, ids
print("models ok")

strict = openai.OpenAI(base_url=base, api_key=os.environ["STRICT_KEY"], max_retries=0)
try:
    strict.chat.completions.create(model="builtin/scripted", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("a model outside the allow list was served")
except openai.PermissionDeniedError as e:
    assert e.status_code == 403 and e.code == "model_not_allowed", (e.status_code, e.code)
print("not allowed ok")

broke = openai.OpenAI(base_url=base, api_key=os.environ["BROKE_KEY"], max_retries=0)
try:
    broke.chat.completions.create(model="builtin/scripted", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("a call beyond the budget was served")
except openai.APIStatusError as e:
    assert e.status_code == 402 and e.code == "budget_exceeded", (e.status_code, e.code)
print("budget ok")
