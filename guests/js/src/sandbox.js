// What the engine cannot do in a transform (see features.js) would trap the
// instance without a word; these replacements throw an exception instead,
// which the SDK reports like any other crash, naming the call. Installed
// when the module is first evaluated, at build time: the component starts
// from that state.

/** Throws the exception that says `what` is not available, and why. */
function unavailable(what, why) {
  throw new Error(`${what}: ${why}`);
}

export function installSandbox(disabled, g = globalThis) {
  if (disabled.includes("clocks")) {
    const noClock = (what) => unavailable(what, "a transform has no clock (take times from the message)");
    const RealDate = g.Date;
    // new Date(value) and the static functions work as usual.
    function Date(...args) {
      if (!new.target) noClock("Date()");
      if (args.length === 0) noClock("new Date()");
      return Reflect.construct(RealDate, args, new.target);
    }
    Object.setPrototypeOf(Date, RealDate);
    Date.prototype = RealDate.prototype;
    Date.now = () => noClock("Date.now()");
    g.Date = Date;
    if (g.performance) g.performance.now = () => noClock("performance.now()");
    for (const timer of ["setTimeout", "setInterval"]) {
      g[timer] = () => noClock(`${timer}()`);
    }
  }
  if (disabled.includes("http")) {
    g.fetch = (resource) =>
      unavailable(
        `fetch(${JSON.stringify(String(resource))})`,
        "a transform has no network or files (return a call action instead)",
      );
  }
  // SpiderMonkey here has no Unicode normalization data: it would abort.
  g.String.prototype.normalize = function normalize() {
    unavailable("String.prototype.normalize()", "not available in this engine");
  };
}
