/**
 * `task-broker/client`: the SDK for workloads (and the admin client for platform teams). Loads
 * the protocol, SPIFFE and logging modules only: no database driver, no metrics.
 */
export {
  TaskBrokerClient,
  connectTaskBroker,
  type ConnectTaskBrokerOptions,
  type CompleteTaskOptions,
  type GatewayCallOptions,
  type IssueTokenOptions,
  type ListOwnTasksOptions,
  type ReadTaskOptions,
  type TaskBrokerClientOptions,
  type TaskCallOptions,
} from './task-broker-client.js';
export type {
  CreatedTask,
  CreateTaskInput,
  DelegatedSpecInput,
  DelegatedTask,
  DelegateTaskInput,
  EndedTask,
  Identity,
  IssuedToken,
  JsonObject,
  JsonValue,
  Principal,
  Requester,
  Task,
  TaskReadOperation,
  TaskResult,
  TaskSpecInfo,
  TaskSpecInput,
  TaskState,
} from './results.js';
export {
  AbortedError,
  AlreadyExistsError,
  DeadlineExceededError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
  RETRY_PUSHBACK_TRAILER,
  TaskBrokerError,
  UnauthenticatedError,
  UnavailableError,
  toTaskBrokerError,
  type TaskBrokerErrorReason,
} from './errors.js';
export { connectionProblem, type ConnectionAdvice, type ConnectionContext, type ConnectionProblem, type ConnectionProblemKind } from './connect-errors.js';
export { BrokerClient, ServiceClient, unaryCall, type CallOptions, type ConnectOptions } from './broker-client.js';
export { AdminClient } from './admin-client.js';
export { svidChannelCredentials, svidChannelOptions, type SvidCredentialFiles, type SvidCredentialsOptions } from './credentials.js';
export { x509SourceCredentials, type X509SourceCredentialsOptions } from './source-credentials.js';
export {
  FileX509Source,
  WorkloadApiSource,
  fileX509Source,
  workloadApiX509Source,
  type FileX509SourceOptions,
  type WorkloadApiX509SourceOptions,
} from './sources.js';
export type { TlsIdentity, X509Source } from '../spiffe/x509-source.js';
export { bundleRootsPem, type X509Bundle } from '../spiffe/bundle.js';
