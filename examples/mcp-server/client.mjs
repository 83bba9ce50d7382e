// Two MCP clients (the official SDK's Client over Streamable HTTP with mTLS through an undici
// Agent): the first calls `report.generate` as a task, polls it, fetches its result and lists its
// tasks; the second, another SPIFFE ID that knows the task ID, is told "Task not found" for the
// same task on tasks/get, tasks/result and tasks/cancel. Prints `TASK_ID=…` and exits 0 when all
// went as it should.
//
// Environment: MCP_URL, MCP_SERVER_ID, BUNDLE, SVID_CERT, SVID_KEY (the creator), OTHER_SVID_CERT, OTHER_SVID_KEY.
import { readFileSync } from 'node:fs';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { CallToolResultSchema } from '@modelcontextprotocol/sdk/types.js';
import { Agent, fetch } from 'undici';

const env = (name) =>
  process.env[name] ??
  (() => {
    throw new Error(`${name} is not set`);
  })();

/** An MCP client presenting the SVID in `certFile`/`keyFile`; the server is authenticated by its SPIFFE ID, not a host name. */
async function connect(name, certFile, keyFile) {
  const agent = new Agent({
    connect: {
      cert: readFileSync(certFile),
      key: readFileSync(keyFile),
      ca: readFileSync(env('BUNDLE')),
      checkServerIdentity: (_host, cert) => (cert.subjectaltname === `URI:${env('MCP_SERVER_ID')}` ? undefined : new Error(`not ${env('MCP_SERVER_ID')}`)),
    },
  });
  const client = new Client({ name, version: '1.0.0' });
  const transport = new StreamableHTTPClientTransport(new URL(env('MCP_URL')), { fetch: (url, init) => fetch(url, { ...init, dispatcher: agent }) });
  await client.connect(transport);
  return { client, close: async () => (await client.close(), await agent.close()) };
}

const check = (ok, what) => {
  if (!ok) throw new Error(`unexpected: ${what}`);
  console.log(`ok: ${what}`);
};

const creator = await connect('creator', env('SVID_CERT'), env('SVID_KEY'));
const other = await connect('other', env('OTHER_SVID_CERT'), env('OTHER_SVID_KEY'));
try {
  // Task-augmented tools/call: the SDK yields the created task, each tasks/get poll, then the tasks/result answer.
  let taskId;
  let result;
  const stream = creator.client.experimental.tasks.callToolStream({ name: 'report.generate', arguments: { quarter: '2026-Q1' } }, undefined, {
    task: { ttl: 60_000 },
  });
  for await (const message of stream) {
    if (message.type === 'taskCreated') {
      taskId = message.task.taskId;
      console.log(`task created: ${taskId} (${message.task.status}, ttl ${message.task.ttl} ms)`);
    } else if (message.type === 'taskStatus') console.log(`tasks/get: ${message.task.status}`);
    else if (message.type === 'result') result = message.result;
    else if (message.type === 'error') throw message.error;
  }
  console.log(`tasks/result: ${result.content[0].text}`);
  check(result.content[0].text.startsWith('Report 2026-Q1'), 'the creator got the report');

  const polled = await creator.client.experimental.tasks.getTask(taskId);
  check(polled.status === 'completed', `tasks/get says ${polled.status}`);
  const again = await creator.client.experimental.tasks.getTaskResult(taskId, CallToolResultSchema);
  check(again.content[0].text === result.content[0].text, 'tasks/result again returns the stored result');
  const { tasks } = await creator.client.experimental.tasks.listTasks();
  check(
    tasks.some((t) => t.taskId === taskId),
    `tasks/list shows the creator's ${tasks.length} task(s)`,
  );

  for (const [method, call] of [
    ['tasks/get', () => other.client.experimental.tasks.getTask(taskId)],
    ['tasks/result', () => other.client.experimental.tasks.getTaskResult(taskId, CallToolResultSchema)],
    ['tasks/cancel', () => other.client.experimental.tasks.cancelTask(taskId)],
  ]) {
    const err = await call().then(
      () => undefined,
      (e) => e,
    );
    check(err?.message?.includes(`Task not found: ${taskId}`), `another identity's ${method} → "${err?.message}"`);
  }
  const { tasks: othersTasks } = await other.client.experimental.tasks.listTasks();
  check(!othersTasks.some((t) => t.taskId === taskId), `another identity's tasks/list does not show it (${othersTasks.length} task(s))`);
  console.log(`TASK_ID=${taskId}`);
} finally {
  await creator.close();
  await other.close();
}
