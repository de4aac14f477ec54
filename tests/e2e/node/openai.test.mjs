// The server through the official OpenAI Node SDK (run by tests/e2e/run).
import { test } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";

const url = process.env.SWITCHYARD_URL;
const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0 });
const model = "smollm2-135m-instruct";
const messages = [{ role: "user", content: "Name a fruit." }];

test("chat completion shape", { skip: !url }, async () => {
  const r = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0 });
  assert.equal(r.object, "chat.completion");
  assert.equal(r.choices[0].message.role, "assistant");
  assert.ok(["stop", "length"].includes(r.choices[0].finish_reason));
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
});

test("stream helper finalChatCompletion", { skip: !url }, async () => {
  const plain = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0 });
  const final = await client.chat.completions.stream({ model, messages, max_tokens: 8, temperature: 0 }).finalChatCompletion();
  assert.equal(final.choices[0].message.role, "assistant");
  assert.ok(final.choices[0].finish_reason);
  assert.equal(final.choices[0].message.content, plain.choices[0].message.content);
});

test("errors keep their message", { skip: !url }, async () => {
  await assert.rejects(
    client.chat.completions.create({ model: "no-such-model", messages }),
    (e) => e.status === 404 && e.message.includes("no-such-model") && e.error?.code === "model_not_found",
  );
  await assert.rejects(
    client.chat.completions.create({ model, messages, temperature: 9 }),
    (e) => e.status === 400 && e.message.includes("temperature"),
  );
});

test("zodResponseFormat with parse()", { skip: !url }, async () => {
  const { z } = await import("zod");
  const { zodResponseFormat } = await import("openai/helpers/zod");
  const Pet = z.object({ name: z.string().max(16), legs: z.number().int().min(0).max(8) });
  for (const m of [model, "gemma-3-270m"]) {
    const r = await client.chat.completions.parse({
      model: m, max_tokens: 64, temperature: 0,
      messages: [{ role: "user", content: "Describe a pet as JSON with its name and number of legs." }],
      response_format: zodResponseFormat(Pet, "pet"),
    });
    assert.equal(r.choices[0].finish_reason, "stop");
    const pet = r.choices[0].message.parsed;
    assert.deepEqual(Pet.parse(pet), pet);
  }
});

test("runTools completes a two-step tool loop", { skip: !url }, async () => {
  const seen = [];
  const runner = client.chat.completions.runTools({
    model, max_tokens: 80, temperature: 0, tool_choice: "required", parallel_tool_calls: false,
    messages: [{ role: "user", content: "What is the weather in Paris?" }],
    tools: [{
      type: "function",
      function: {
        name: "get_weather",
        description: "Current weather in a city",
        parameters: {
          type: "object", additionalProperties: false, required: ["city"],
          properties: { city: { type: "string", maxLength: 20 } },
        },
        parse: JSON.parse,
        function: async (args) => { seen.push(args); return { temperature: 18, sky: "clear" }; },
      },
    }],
  }, { maxChatCompletions: 2 });
  await runner.done();
  // Two completions, each a call the runner executed; the second request
  // carried the first call and its result back through the chat template.
  assert.equal(seen.length, 2);
  for (const args of seen) assert.equal(typeof args.city, "string");
  const toolMessages = runner.messages.filter((m) => m.role === "tool");
  assert.equal(toolMessages.length, 2);
  assert.ok(runner.messages.some((m) => m.role === "assistant" && m.tool_calls?.length === 1));
});
