// The responses.stream helper: its events, as they come, and the final response it assembles.
import { client, model, run } from './client.mjs';

await run(async () => {
  const stream = client().responses.stream({ model: model('fake-echo'), input: 'one two three' });
  const events = [];
  const sequence = [];
  let deltas = '';
  for await (const event of stream) {
    events.push(event.type);
    sequence.push(event.sequence_number);
    if (event.type === 'response.output_text.delta') deltas += event.delta;
  }
  const final = await stream.finalResponse();
  return {
    events,
    deltas,
    sequence,
    final: { id: final.id, status: final.status, output_text: final.output_text, output: final.output },
  };
});
