/**
 * `task-broker policy check`: what a policy file decides for one request (or one admin), offline.
 * Exit codes: 0 allowed, 3 denied, 2 usage, 1 the policy file cannot be read or parsed.
 */
import type { AdminDecision, PolicyDecision } from '../policy/policy.js';
import { parseDurationSeconds } from '../policy/policy-document.js';
import { readPolicyFile } from '../policy/policy-source.js';
import { SpiffeId, SpiffeIdError } from '../spiffe/id.js';
import { ExitCode, listOption, seeHelp, stringOption, UsageError, type CommandSpec, type ParsedCommand } from './options.js';

export const policyCheckSpec: CommandSpec = {
  name: 'policy check',
  summary: 'Evaluate a policy file offline: would the broker allow this caller this request (or admin access)?',
  options: {
    policy: { type: 'string', placeholder: 'FILE', required: true, env: 'TASK_BROKER_POLICY', description: 'Policy file (YAML) to evaluate' },
    caller: {
      type: 'string',
      placeholder: 'SPIFFE_ID',
      description: 'SPIFFE ID of the calling workload, e.g. spiffe://example.org/ns/billing/sa/worker (without it: only check that the file is valid)',
    },
    action: { type: 'string', placeholder: 'ACTION', description: 'Action the task would perform, e.g. invoice.export (required unless --admin)' },
    audience: { type: 'string', placeholder: 'SPIFFE_ID', description: "SPIFFE ID of the resource server the task's tokens are for (required unless --admin)" },
    scope: { type: 'string', multiple: true, placeholder: 'SCOPE', description: 'A scope the task asks for; give once per scope (none: no scopes)' },
    ttl: {
      type: 'string',
      placeholder: 'DURATION',
      description: "Task lifetime to check against the rule's max_task_ttl, e.g. 90s, 5m, 1h, 7d (default: not checked)",
    },
    gateway: {
      type: 'string',
      placeholder: 'SPIFFE_ID',
      description: "A gateway (e.g. an MCP server) creating the task for --caller, which the rule's gateways must allow (default: none, the caller itself)",
    },
    admin: { type: 'boolean', description: 'Check whether --caller may use the admin API instead (--action and --audience are then not needed)' },
    json: { type: 'boolean', description: 'Print the decision as one JSON object instead of text' },
  },
  notes:
    'With --policy alone the file is only validated: 0 valid, 1 not (the line and column of the first error).\n' +
    'Exit status: 0 allowed, 3 denied, 2 usage error, 1 the policy file cannot be read or is not valid.\n' +
    'Denials say why: which rules matched the caller and the first condition each of them failed.',
};

function spiffeIdOption(parsed: ParsedCommand, name: string): SpiffeId {
  const value = stringOption(parsed.values, name);
  if (value === undefined) throw new UsageError(`--${name} is required ${seeHelp(policyCheckSpec.name)}`);
  try {
    return SpiffeId.parse(value);
  } catch (err) {
    if (err instanceof SpiffeIdError) throw new UsageError(`--${name}: ${err.message}`);
    throw err;
  }
}

function requiredUnlessAdmin(parsed: ParsedCommand, name: string): string {
  const value = stringOption(parsed.values, name);
  if (value === undefined || value === '') {
    throw new UsageError(`--${name} is required (unless --admin) ${seeHelp(policyCheckSpec.name)}`);
  }
  return value;
}

export async function runPolicyCheck(parsed: ParsedCommand, out: (line: string) => void): Promise<number> {
  const path = stringOption(parsed.values, 'policy') ?? '';
  const asks = ['caller', 'action', 'audience', 'gateway', 'ttl'].some((name) => stringOption(parsed.values, name) !== undefined);
  if (!asks && parsed.values.admin !== true && listOption(parsed.values, 'scope').length === 0) {
    // Validation only. A PolicyError propagates: main() prints it (file, line, column) and exits 1.
    const policy = await readPolicyFile(path);
    const summary = { valid: true, policy: path, digest: policy.digest, rules: policy.rules.length };
    out(parsed.values.json === true ? JSON.stringify(summary) : `OK: policy ${path} is valid (${summary.rules} rules; digest ${policy.digest})`);
    return ExitCode.ok;
  }
  const caller = spiffeIdOption(parsed, 'caller');
  const admin = parsed.values.admin === true;
  const json = parsed.values.json === true;

  let request: { action: string; audience: string; scopes: string[]; taskTtlSeconds?: number; gateway?: SpiffeId } | undefined;
  if (!admin) {
    const action = requiredUnlessAdmin(parsed, 'action');
    const audience = spiffeIdOption(parsed, 'audience').toString();
    const ttl = stringOption(parsed.values, 'ttl');
    let taskTtlSeconds: number | undefined;
    if (ttl !== undefined) {
      try {
        taskTtlSeconds = parseDurationSeconds(ttl);
      } catch (err) {
        throw new UsageError(`--ttl: ${(err as Error).message}`);
      }
    }
    const gateway = stringOption(parsed.values, 'gateway') === undefined ? undefined : spiffeIdOption(parsed, 'gateway');
    request = {
      action,
      audience,
      scopes: listOption(parsed.values, 'scope'),
      ...(taskTtlSeconds !== undefined ? { taskTtlSeconds } : {}),
      ...(gateway ? { gateway } : {}),
    };
  }

  // A PolicyError propagates: main() prints it to stderr and exits 1.
  const policy = await readPolicyFile(path);
  const decision: PolicyDecision | AdminDecision = request ? policy.decide({ caller, ...request }) : policy.adminDecision(caller);

  if (json) {
    out(JSON.stringify(decision));
  } else if (!decision.allowed) {
    out(`DENY: ${decision.reason}`);
  } else if ('entry' in decision) {
    out(`ALLOW: ${caller.toString()} is an admin (admins entry "${decision.entry}")`);
  } else {
    const ttl = decision.maxTokenTtlSeconds !== undefined ? `token ttl capped at ${decision.maxTokenTtlSeconds}s` : 'token ttl not capped by the policy';
    out(
      `ALLOW by rule "${decision.rule}" (approval required: ${decision.requireApproval ? 'yes' : 'no'}; ${ttl}; results kept ${decision.resultRetentionSeconds}s)`,
    );
  }
  if (!json) out(`policy: ${path} (digest ${policy.digest})`);
  return decision.allowed ? ExitCode.ok : ExitCode.denied;
}
