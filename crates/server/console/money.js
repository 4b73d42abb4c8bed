// Money arrives as exact decimal strings ("0.000015"); sums are done in
// integer nano-dollars (BigInt), as the server does, and only the drawing of
// a chart turns them into floating-point lengths.

const SCALE = 1000000000n;

/** Nano-dollars of a decimal string; 0n for null or something unreadable. */
export function nanos(text) {
  if (text === null || text === undefined) return 0n;
  const m = /^(-?)(\d+)(?:\.(\d+))?$/.exec(String(text).trim());
  if (!m) return 0n;
  const frac = (m[3] || '').slice(0, 9).padEnd(9, '0');
  const value = BigInt(m[2]) * SCALE + BigInt(frac);
  return m[1] ? -value : value;
}

/** "$1.50", "$0.000015": at least two decimals, at most nine, no trailing zeros. */
export function usd(n) {
  const negative = n < 0n;
  const abs = negative ? -n : n;
  const whole = abs / SCALE;
  let frac = (abs % SCALE).toString().padStart(9, '0').replace(/0+$/, '');
  if (frac.length < 2) frac = frac.padEnd(2, '0');
  return `${negative ? '-' : ''}$${whole.toLocaleString('en-US')}.${frac}`;
}

/** A decimal string as dollars; a dash when absent. */
export function usdText(text) {
  return text === null || text === undefined ? '—' : usd(nanos(text));
}

/** Dollars as a float, for chart geometry only. */
export function toNumber(n) {
  return Number(n) / 1e9;
}
