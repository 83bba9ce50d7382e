/**
 * A requester authenticated by a bearer token instead of a client certificate: the MCP server
 * forwards the token as a subject token, the broker verifies it against the policy's
 * subject_issuers and binds the task to its subject. Another person's token, and a request with
 * no identity at all, get nothing.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { CallToolResultSchema, ErrorCode } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestBroker, type TestBroker } from '../helpers/broker.js';
import { subjectIssuersYaml, testIdp, type TestIdp } from '../helpers/idp.js';
import { MutablePolicySource, policyOf } from '../helpers/policy.js';
import { MCP_SERVER, startMcpFixture, TOOL, type McpFixture } from './fixture.js';

const policyText = (idp: TestIdp): string => `
version: 1
admins: [spiffe://a.test/ns/platform/sa/admin]
${subjectIssuersYaml(idp)}
rules:
  - name: mcp-tools
    callers: { trust_domains: [a.test] }
    actions: ["${TOOL}"]
    audiences: ["${MCP_SERVER}"]
    scopes: ["*"]
    gateways: ["${MCP_SERVER}"]
`;

describe('MCP tasks for a bearer-token requester (pglite)', () => {
  let t: TestBroker;
  let idp: TestIdp;
  let mcp: McpFixture;
  let carol: Client;
  let dave: Client;
  let anonymous: Client;

  beforeAll(async () => {
    idp = await testIdp();
    t = await startTestBroker('pglite', { policy: new MutablePolicySource(policyOf(policyText(idp))) });
    mcp = await startMcpFixture(t);
    carol = await mcp.connect('carol', { bearer: await idp.token({ sub: 'carol', sid: 's1' }) });
    dave = await mcp.connect('dave', { bearer: await idp.token({ sub: 'dave', sid: 's2' }) });
    anonymous = await mcp.connect('anonymous', { bearer: '' });
  }, 60_000);

  afterAll(async () => {
    await mcp?.close();
    await t?.close();
  });

  it("binds the task to the token's subject: the creator reads it, another person gets task not found", async () => {
    let taskId: string | undefined;
    for await (const message of carol.experimental.tasks.callToolStream({ name: TOOL, arguments: { title: 'Q2' } }, undefined, { task: { ttl: 30_000 } })) {
      if (message.type === 'taskCreated') {
        taskId = message.task.taskId;
        break;
      }
      if (message.type === 'error') throw message.error;
    }
    expect(taskId).toMatch(/^tsk_/);
    const id = taskId!;
    expect(await carol.experimental.tasks.getTask(id)).toMatchObject({ taskId: id, status: 'working' });
    const notFound = expect.objectContaining({ code: ErrorCode.InvalidParams, message: expect.stringContaining(`Task not found: ${id}`) }) as unknown;
    await expect(dave.experimental.tasks.getTask(id)).rejects.toEqual(notFound);
    await expect(dave.experimental.tasks.getTaskResult(id, CallToolResultSchema)).rejects.toEqual(notFound);
    await expect(dave.experimental.tasks.cancelTask(id)).rejects.toEqual(notFound);
    expect((await dave.experimental.tasks.listTasks()).tasks.map((x) => x.taskId)).not.toContain(id);

    const pending = carol.experimental.tasks.getTaskResult(id, CallToolResultSchema);
    await mcp.works.finish(id, 'ready');
    expect((await pending).content).toEqual([{ type: 'text', text: 'Q2: ready' }]);
    expect((await carol.experimental.tasks.listTasks()).tasks.map((x) => x.taskId)).toContain(id);
  });

  it('refuses task requests that carry no identity, before asking the broker', async () => {
    const noIdentity = expect.objectContaining({ code: ErrorCode.InvalidRequest, message: expect.stringMatching(/authenticated requester/) }) as unknown;
    await expect(anonymous.experimental.tasks.getTask('tsk_AAAAAAAAAAAAAAAAAAAAAAAA')).rejects.toEqual(noIdentity);
    await expect(anonymous.experimental.tasks.listTasks()).rejects.toEqual(noIdentity);
    const before = mcp.works.started.length;
    const stream = anonymous.experimental.tasks.callToolStream({ name: TOOL, arguments: { title: 'x' } }, undefined, { task: { ttl: 30_000 } });
    const first = (await stream.next()).value;
    expect(first).toMatchObject({ type: 'error', error: noIdentity });
    expect(mcp.works.started.length).toBe(before);
  });
});
