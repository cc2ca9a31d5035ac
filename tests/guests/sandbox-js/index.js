// Test fixture, not shipped: a transform that tries to reach the machine it
// runs on and reports each outcome as the args of one call (fixture.report),
// so host tests can assert that nothing was reachable:
//   {"file": "error: ...", "env": null, "socket": "error: ...", "clock": "error: ...", "random": [..]}
// A JavaScript component built by the SDK imports no WASI at all: it has no
// file or socket API, `fetch` has no HTTP behind it, and the SDK makes the
// clock an exception. "random" is what crypto.getRandomValues gives: with no
// random source it is the same in every fresh instance.

import { asTransform, call } from "@passerelle/guest";

async function attempt(probe) {
  try {
    return await probe();
  } catch (error) {
    return `error: ${error?.name ?? "Error"}: ${error?.message ?? String(error)}`;
  }
}

async function report(msg) {
  const only = msg.json({ only: "string?" }).only;
  const probes = {
    file: async () => {
      const response = await fetch("file:///etc/passwd");
      return `read ${(await response.text()).length} bytes`;
    },
    env: async () => globalThis.process?.env?.HOME ?? globalThis.process?.env?.PATH ?? null,
    socket: async () => {
      const response = await fetch("http://127.0.0.1:5672/");
      return `connected: HTTP ${response.status}`;
    },
    clock: async () => Date.now(),
    random: async () => Array.from(crypto.getRandomValues(new Uint8Array(4))),
  };
  const args = {};
  for (const [name, probe] of Object.entries(probes)) {
    if (only === undefined || only === name) args[name] = await attempt(probe);
  }
  return [call("fixture", "report", args)];
}

export const transform = asTransform(report);
