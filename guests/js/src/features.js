// What the JavaScript engine in a transform may use, in one place: the build
// (bin/componentize.js) disables these componentize-js features, and the SDK
// (sandbox.js) turns what they would have provided into plain exceptions.
//
// Disabled, the component imports none of their WASI interfaces:
//   stdio        console and crash output: the SDK sends both to the host's log
//   clocks       Date.now(), new Date(), performance.now(), timers
//   http         fetch() (a transform's calls are actions the host performs)
//   fetch-event  incoming HTTP requests
// Kept:
//   random       Math.random() and crypto: without it they would give the same
//                values in every fresh instance (the same "random" id for every
//                message); it imports wasi:random/random only.
export const DISABLED_FEATURES = ["stdio", "clocks", "http", "fetch-event"];
