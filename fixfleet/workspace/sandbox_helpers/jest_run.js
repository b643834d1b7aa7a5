// fixfleet's way of starting the repository's own jest: with the platform's options (its
// reporter aimed at the report channel, the exact test paths), but without them in the process's
// arguments. Tests that parse their own process's arguments (a CLI library's tests calling
// `program.parse()`) then see what they would under the project's own `jest` command: jest runs
// them in this process when it runs in band.
//
//     node jest_run.js <jest options and paths...>
'use strict';
const path = require('path');

const args = process.argv.slice(2);
const jest = require.resolve('jest', { paths: [process.cwd()] });
process.argv = [process.argv[0], path.join(process.cwd(), 'node_modules', '.bin', 'jest')];
require(jest).run(args);
