// responses.parse with a zod text format: the answer comes back parsed, as the schema's type.
import { zodTextFormat } from 'openai/helpers/zod';
import { z } from 'zod';
import { client, model, run } from './client.mjs';

const Answer = z.object({ answer: z.number() });

await run(async () => {
  const parsed = await client().responses.parse({
    model: model('fake-json'),
    input: 'What is the answer?',
    text: { format: zodTextFormat(Answer, 'answer') },
  });
  return { output_parsed: parsed.output_parsed, output_text: parsed.output_text, format: parsed.text.format };
});
