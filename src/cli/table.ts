/**
 * Plain-text output for humans: aligned tables and `key: value` blocks. Every cell is made
 * printable first, so text that came from a workload (a completion outcome, task params) cannot
 * carry terminal escape sequences or line breaks into an operator's terminal.
 */

// C0 and C1 control characters, and the Unicode bidirectional overrides that can reorder what is shown.
// eslint-disable-next-line no-control-regex
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

/** `text` with control and bidi-override characters shown as `\u{…}` escapes. */
export function printable(text: string): string {
  return text.replace(UNPRINTABLE, (c) => `\\u{${(c.codePointAt(0) ?? 0).toString(16)}}`);
}

/** An aligned table: a header row, then one line per row; columns separated by two spaces. */
export function formatTable(headers: readonly string[], rows: readonly (readonly string[])[]): string[] {
  const cells = [headers, ...rows].map((row) => headers.map((_, i) => printable(row[i] ?? '')));
  // A loop, not Math.max(...column): spreading one argument per row overflows the call stack on
  // long tables (an audit trail of a long-polled task has hundreds of thousands of rows).
  const widths = headers.map(() => 0);
  for (const row of cells) {
    row.forEach((cell, i) => {
      widths[i] = Math.max(widths[i] ?? 0, cell.length);
    });
  }
  const last = headers.length - 1;
  return cells.map((row) =>
    row
      .map((cell, i) => (i === last ? cell : cell.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd(),
  );
}

/** `key: value` lines with the values aligned; pairs whose value is undefined are left out. */
export function formatFields(pairs: ReadonlyArray<readonly [string, string | undefined]>): string[] {
  const shown = pairs.filter((p): p is readonly [string, string] => p[1] !== undefined);
  const width = Math.max(0, ...shown.map(([key]) => key.length)) + 2;
  return shown.map(([key, value]) => `${`${key}:`.padEnd(width)}${printable(value)}`.trimEnd());
}
