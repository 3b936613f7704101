// Conversations: create one with an item, take a turn in it, and list its items.
import { client, model, run } from './client.mjs';

await run(async () => {
  const openai = client();
  const conversation = await openai.conversations.create({
    metadata: { topic: 'node' },
    items: [{ type: 'message', role: 'user', content: 'first words' }],
  });
  const turn = await openai.responses.create({
    model: model('fake-echo'),
    conversation: conversation.id,
    input: 'second words',
  });
  const items = [];
  for await (const item of openai.conversations.items.list(conversation.id, { order: 'asc' })) {
    items.push({ type: item.type, role: item.role, text: item.content.map((part) => part.text).join('') });
  }
  const retrieved = await openai.conversations.retrieve(conversation.id);
  return {
    conversation: { id: conversation.id, object: conversation.object, metadata: retrieved.metadata },
    turn: { conversation: turn.conversation, output_text: turn.output_text },
    items,
  };
});
