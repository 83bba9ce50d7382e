/**
 * formatTable sizes its columns from every row. An audit trail of a long-polled task runs to
 * hundreds of thousands of events, so the widths must not be computed by spreading one argument
 * per row into Math.max (which overflows the call stack somewhere past 100,000 rows on Node 20).
 */
import { describe, expect, it } from 'vitest';
import { formatFields, formatTable } from '../../src/cli/table.js';

describe('formatTable', () => {
  it('aligns columns on the widest cell, header included', () => {
    expect(
      formatTable(
        ['ID', 'STATE', 'NOTE'],
        [
          ['1', 'PENDING', 'x'],
          ['12345', 'OK', ''],
        ],
      ),
    ).toEqual(['ID     STATE    NOTE', '1      PENDING  x', '12345  OK']);
  });

  it('formats 200,000 rows', () => {
    const rows = Array.from({ length: 200_000 }, (_, i) => [String(i), i === 150_000 ? 'a-much-longer-cell' : 'ok', 'tail']);
    const lines = formatTable(['SEQ', 'EVENT', 'ACTOR'], rows);
    expect(lines).toHaveLength(200_001);
    expect(lines.slice(0, 3)).toEqual(['SEQ     EVENT               ACTOR', '0       ok                  tail', '1       ok                  tail']);
    expect(lines[150_001]).toBe('150000  a-much-longer-cell  tail');
    expect(lines[200_000]).toBe('199999  ok                  tail');
  });
});

describe('formatFields', () => {
  it('aligns values and leaves out undefined ones', () => {
    expect(
      formatFields([
        ['id', 'abc'],
        ['state', undefined],
        ['created by', 'me'],
      ]),
    ).toEqual(['id:         abc', 'created by: me']);
  });
});
