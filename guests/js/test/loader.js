// Module resolution hook for the tests: the WIT import becomes fake-host.js.
const fakeHost = new URL("./fake-host.js", import.meta.url).href;

export async function resolve(specifier, context, next) {
  if (specifier === "passerelle:transform/host@0.1.0") return { url: fakeHost, shortCircuit: true };
  return next(specifier, context);
}
