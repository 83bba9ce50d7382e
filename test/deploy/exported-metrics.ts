/**
 * The metric names a broker's /metrics exports, as the alerting rules and the Grafana dashboard
 * of deploy/components/monitoring may use them. One list, so a test that scrapes a running
 * broker can check it (or replace it with what it scraped). Histograms are listed by their base
 * name: their _bucket, _sum and _count series count as listed.
 */
export const EXPORTED_METRICS: readonly string[] = [
  'task_broker_ready',
  'task_broker_readiness_check',
  'task_broker_svid_expiry_timestamp_seconds',
  'task_broker_svid_age_seconds',
  'task_broker_svid_remaining_seconds',
  'task_broker_svid_source_connected',
  'task_broker_svid_source_last_update_age_seconds',
  'task_broker_audit_write_duration_seconds',
  'task_broker_db_write_batch_duration_seconds',
  'task_broker_db_write_batch_operations',
  'task_broker_db_pool_connections',
  'task_broker_db_pool_idle_connections',
  'task_broker_db_pool_waiting_requests',
  'task_broker_db_pool_max_connections',
  'task_broker_db_consecutive_write_failures',
  'task_broker_token_verifications_total',
  'task_broker_tokens_issued_total',
  'task_broker_tokens_revoked_total',
  'task_broker_tasks_ended_total',
  'task_broker_revocation_log_read_age_seconds',
  'task_broker_revocation_streams',
  'task_broker_calls_shed_total',
  'task_broker_connections_open',
  'task_broker_tls_handshake_failures_total',
  'task_broker_policy_reload_failures_total',
  'grpc_server_started_total',
  'grpc_server_handled_total',
  'grpc_server_handling_seconds',
  // Node.js and process defaults, unprefixed.
  'process_cpu_seconds_total',
  'process_resident_memory_bytes',
  'process_open_fds',
  'nodejs_eventloop_lag_p99_seconds',
  'nodejs_heap_size_used_bytes',
  'nodejs_gc_duration_seconds',
];

/** Series Prometheus itself adds to every target; rules may use them besides the broker's own. */
export const SCRAPE_METRICS: readonly string[] = ['up'];
