// Loaded with `node --import ./test/register.js --test`: lets the SDK's
// `import ... from "passerelle:transform/host@0.1.0"` resolve, in Node, to
// fake-host.js (what the component gets from the host at run time).
import { register } from "node:module";

register("./loader.js", import.meta.url);
