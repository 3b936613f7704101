// What every script shares: the client, pointed at the Parley under test, and how results leave.
import OpenAI from 'openai';

/** The openai-node client for the Parley at PARLEY_BASE_URL (its `/v1` root); no retries, so a failure shows. */
export function client() {
  return new OpenAI({
    baseURL: process.env.PARLEY_BASE_URL,
    apiKey: 'test-key',
    maxRetries: 0,
    timeout: 30_000,
  });
}

/** The model to ask, by Parley's name for it (`provider/model`). */
export const model = (name) => `${process.env.PARLEY_PROVIDER ?? 'fake'}/${name}`;

/**
 * Runs `main` and prints what it returns as one line of JSON; an error is printed as JSON too
 * (its class, status and body), on stdout, with exit status 1, so the test can say what went wrong.
 */
export async function run(main) {
  try {
    process.stdout.write(JSON.stringify(await main()) + '\n');
  } catch (error) {
    const failure = {
      error: error?.constructor?.name ?? typeof error,
      message: String(error?.message ?? error),
      status: error?.status ?? null,
      body: error?.error ?? null,
    };
    process.stdout.write(JSON.stringify(failure) + '\n');
    process.exitCode = 1;
  }
}
