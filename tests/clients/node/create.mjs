// responses.create, not streamed: a plain answer, then a function call answered with previous_response_id.
import { client, model, run } from './client.mjs';

await run(async () => {
  const openai = client();
  const plain = await openai.responses.create({ model: model('fake-echo'), input: 'hello from node' });

  const tools = [
    {
      type: 'function',
      name: 'get_weather',
      description: 'The weather in a city.',
      parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
      strict: false,
    },
  ];
  const asked = await openai.responses.create({ model: model('fake-tool'), input: 'weather?', tools });
  const call = asked.output.find((item) => item.type === 'function_call');
  const answered = await openai.responses.create({
    model: model('fake-tool'),
    previous_response_id: asked.id,
    input: [{ type: 'function_call_output', call_id: call.call_id, output: 'sunny' }],
    tools,
  });
  const retrieved = await openai.responses.retrieve(answered.id);

  return {
    plain: { id: plain.id, object: plain.object, status: plain.status, output_text: plain.output_text },
    call: { response_id: asked.id, type: call.type, name: call.name, arguments: JSON.parse(call.arguments), status: asked.status },
    answered: { id: answered.id, previous_response_id: answered.previous_response_id, output_text: answered.output_text },
    retrieved: { id: retrieved.id, output_text: retrieved.output_text },
  };
});
