/**
 * `task-broker/mcp`: MCP Tasks (spec 2025-11-25) guarded by the task broker, for the official
 * TypeScript MCP SDK. See guard.ts for what is checked and audited, requester.ts for how the
 * requester of an HTTPS request is named.
 */
export { guardMcpTasks, McpTaskGuard, type GuardBroker, type GuardedToolConfig, type GuardOptions, type ToolTaskContext, type ToolTaskWork } from './guard.js';
export { requesterAuthInfo, requesterOf, REQUESTER_KEY } from './requester.js';
export { argumentsSha256 } from './arguments-hash.js';
export { mcpTaskOf } from './task-status.js';
export { mcpErrorOf } from './errors.js';
