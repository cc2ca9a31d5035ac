// Last words: one line saying why the transform crashed, for the host's
// dead-letter reason (the guest logs it at error level just before it traps,
// as wit/transform.wit asks). Like the Rust SDK's "panic: boom (at src/lib.rs:9:5)":
//   TypeError: x.nope is undefined (at transforms/t/index.js:12:7 in pick, transforms/t/index.js:20:3 in map)
//
// The component runs a bundle of the transform and the SDK; the build embeds
// a line table (from the bundle's source map) so that stack frames name the
// original files and lines. Frames of the SDK and of the generated glue are
// left out: they are the same for every crash.

/** How many of the transform's own frames the line shows. */
const FRAMES = 3;

/** Where the build puts the line table (see bin/componentize.js). */
export const LINE_TABLE = Symbol.for("passerelle.lineTable");

/** One line: `${name}: ${message}` and the innermost frames of the transform's code. */
export function lastWords(error, table = globalThis[LINE_TABLE]) {
  if (!(error instanceof Error) && !(error && typeof error === "object" && "stack" in error)) {
    return `uncaught ${describe(error)} (a thrown value that is not an Error has no stack)`;
  }
  const head = `${error.name ?? "Error"}: ${error.message ?? ""}`;
  const frames = userFrames(String(error.stack ?? ""), table);
  return frames.length ? `${head} (at ${frames.join(", ")})` : head;
}

function describe(value) {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/** SpiderMonkey's stack lines are `name@file:line:column`. */
const FRAME = /^(.*)@(.*):(\d+):(\d+)$/;

function userFrames(stack, table) {
  const frames = [];
  for (const line of stack.split("\n")) {
    const match = FRAME.exec(line.trim());
    if (!match) continue;
    const [, rawName, file, line1, column1] = match;
    const bundled = rawName.replace(/^async\*/, "");
    const name = table?.renames?.[bundled] ?? bundled;
    const place = original(table, file, Number(line1), Number(column1));
    if (!place || place.sdk) continue;
    frames.push(name ? `${place.where} in ${name}` : place.where);
    if (frames.length === FRAMES) break;
  }
  return frames;
}

/**
 * The original place of bundle position `file:line:column` (both 1-based),
 * or null for frames outside the bundle (the generated glue).
 */
function original(table, file, line, column) {
  if (!table || !sameFile(file, table.bundle)) {
    // No table (an unbundled build): show the frame as the engine gave it.
    return table ? null : { where: `${file}:${line}:${column}`, sdk: false };
  }
  const segments = table.lines[line - 1];
  if (!segments) return null;
  // Flat [generatedColumn, source, line, column, ...], sorted by generatedColumn.
  let found = -1;
  for (let i = 0; i < segments.length; i += 4) {
    if (segments[i] <= column - 1) found = i;
    else break;
  }
  if (found < 0) found = 0;
  const source = segments[found + 1];
  return {
    where: `${table.sources[source]}:${segments[found + 2] + 1}:${segments[found + 3] + 1}`,
    sdk: table.sdk.includes(source),
  };
}

function sameFile(file, bundle) {
  return file === bundle || file.endsWith(`/${bundle}`);
}
