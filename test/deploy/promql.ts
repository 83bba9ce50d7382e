/**
 * Just enough PromQL reading for the deploy tests: which metric names an expression selects.
 * Not a parser: it removes what cannot be a metric name (strings, label matchers, ranges,
 * grouping clauses, Grafana variables, numbers, keywords and function calls) and returns the
 * identifiers left. Good for the expressions in deploy/components/monitoring, which the tests
 * also check against hand-written expectations.
 */
const KEYWORDS = new Set(['and', 'or', 'unless', 'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'offset', 'bool', 'inf', 'nan']);

export function metricNamesIn(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""') // string literals
    .replace(/\{[^{}]*\}/g, ' ') // label matchers
    .replace(/\[[^\]]*\]/g, ' ') // range and subquery selectors
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ') // grouping label lists
    .replace(/\$\{?\w+\}?/g, ' ') // Grafana variables ($__rate_interval, ${datasource})
    .replace(/\b(?:\d+(?:ms|[smhdwy]))+\b/g, ' ') // durations (offset 5m, @ 1h30m)
    .replace(/\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b/gi, ' '); // numbers
  const names = new Set<string>();
  for (const match of stripped.matchAll(/[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?/g)) {
    const [whole, call] = match;
    const name = whole.replace(/\s*\($/, '');
    if (call !== undefined || KEYWORDS.has(name.toLowerCase())) continue;
    names.add(name);
  }
  return [...names].sort();
}

/** The listed metric a series name belongs to (a histogram's _bucket/_sum/_count included), if any. */
export function listedMetric(series: string, listed: readonly string[]): string | undefined {
  if (listed.includes(series)) return series;
  const base = series.replace(/_(?:bucket|sum|count)$/, '');
  return base !== series && listed.includes(base) ? base : undefined;
}
