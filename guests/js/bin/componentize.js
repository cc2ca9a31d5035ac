#!/usr/bin/env node
// Builds a JavaScript transform into a component of the passerelle:transform world:
//
//   passerelle-componentize --wit wit --world transform -o out.wasm src/index.js
//
// 1. esbuild bundles the transform with its imports (this SDK, npm packages)
//    into one ES module beside the output (out.bundle.js); the WIT imports
//    (passerelle:*) stay imports.
// 2. A line table from the bundle's source map is appended to it, so that a
//    crash names the original file and line (src/crash.js reads it).
// 3. componentize-js turns the bundle into a component with the engine
//    features of src/features.js disabled: the component imports the world
//    and wasi:random/random, nothing else (no stdio, clocks, HTTP). The SDK
//    sends `console` to the host's log and reports crashes there, so stdio
//    is not needed.
//
// Run from the folder that file names in crash reports are relative to (the
// repository root, for the build script). Prints nothing unless it fails.

import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { basename, dirname, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import { componentize } from "@bytecodealliance/componentize-js";
import { build } from "esbuild";

import { DISABLED_FEATURES } from "../src/features.js";

const usage = "usage: passerelle-componentize --wit <dir> [--world transform] -o <out.wasm> <source.js>";

const sdkDir = resolve(dirname(fileURLToPath(import.meta.url)), "..");

async function main() {
  const { values, positionals } = parseArgs({
    options: {
      wit: { type: "string" },
      world: { type: "string", default: "transform" },
      out: { type: "string", short: "o" },
    },
    allowPositionals: true,
  });
  if (!values.wit || !values.out || positionals.length !== 1) fail(usage);
  const [source] = positionals;
  const out = resolve(values.out);
  const bundlePath = out.replace(/\.wasm$/, "") + ".bundle.js";
  await mkdir(dirname(out), { recursive: true });

  const bundle = await bundleSource(source, bundlePath);
  await writeFile(bundlePath, bundle);

  const { component } = await componentize({
    sourcePath: bundlePath,
    witPath: resolve(values.wit),
    worldName: values.world,
    disableFeatures: DISABLED_FEATURES,
  });
  const partial = `${out}.partial`;
  await writeFile(partial, component);
  await rename(partial, out);
}

/** The transform and everything it imports as one module, with its line table appended. */
async function bundleSource(source, bundlePath) {
  const result = await build({
    entryPoints: [source],
    bundle: true,
    format: "esm",
    platform: "neutral",
    mainFields: ["module", "main"],
    target: "es2022",
    external: ["passerelle:*"],
    keepNames: true, // function names in stack frames
    sourcemap: "external",
    sourcesContent: false,
    outfile: bundlePath,
    write: false,
    logLevel: "silent",
  });
  const js = result.outputFiles.find((f) => f.path.endsWith(".js"));
  const map = JSON.parse(result.outputFiles.find((f) => f.path.endsWith(".map")).text);
  const table = lineTable(map, js.text, dirname(bundlePath), basename(bundlePath));
  // Appended, not prepended: the bundle's own lines keep their numbers.
  return `${js.text}\nglobalThis[Symbol.for("passerelle.lineTable")] = ${JSON.stringify(table)};\n`;
}

/**
 * The source map as the crash report needs it: source names relative to the
 * working directory, which of them are this SDK, for each bundle line its
 * segments as flat [generatedColumn, source, line, column, ...], and the
 * functions the bundler renamed (a `check` that clashed became `check2`).
 */
function lineTable(map, code, mapDir, bundle) {
  const sources = map.sources.map((s) => relative(process.cwd(), resolve(mapDir, s)).split(sep).join("/"));
  const sdk = [];
  map.sources.forEach((s, i) => {
    if (resolve(mapDir, s).startsWith(sdkDir + sep)) sdk.push(i);
  });
  const codeLines = code.split("\n");
  const lines = [];
  const renames = {};
  let source = 0;
  let line = 0;
  let column = 0;
  let name = 0;
  map.mappings.split(";").forEach((text, index) => {
    const segments = [];
    let generated = 0;
    for (const segment of text ? text.split(",") : []) {
      const fields = decodeVlq(segment);
      generated += fields[0];
      if (fields.length < 4) continue;
      source += fields[1];
      line += fields[2];
      column += fields[3];
      segments.push(generated, source, line, column);
      if (fields.length < 5) continue;
      name += fields[4];
      const identifier = /^[A-Za-z_$][\w$]*/.exec((codeLines[index] ?? "").slice(generated))?.[0];
      const original = map.names[name];
      if (identifier && identifier !== original && identifier.startsWith(original) && /^\d+$/.test(identifier.slice(original.length))) {
        renames[identifier] = original;
      }
    }
    lines.push(segments);
  });
  return { bundle, sources, sdk, renames, lines };
}

const BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/** One source map segment: base64 VLQ numbers. */
function decodeVlq(segment) {
  const values = [];
  let value = 0;
  let shift = 0;
  for (const char of segment) {
    const digit = BASE64.indexOf(char);
    value += (digit & 31) << shift;
    if (digit & 32) {
      shift += 5;
    } else {
      values.push(value & 1 ? -(value >>> 1) : value >>> 1);
      value = 0;
      shift = 0;
    }
  }
  return values;
}

function fail(message) {
  console.error(`passerelle-componentize: ${message}`);
  process.exit(1);
}

main().catch((error) => fail(error?.stack ?? String(error)));
