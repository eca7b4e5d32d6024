// Drives @node-idempotency/core with its Redis storage adapter the way its README
// and its express plugin do (onRequest before the handler, onResponse after it),
// pausing after each step so capture_marks.py can read the store.
//
// Run by `python -m tests.tools.capture_marks --port P node --node-dir DIR`, where
// DIR has `npm i @node-idempotency/core @node-idempotency/storage-adapter-redis`.
// Protocol: prints "STEP <name>", then waits for one line on stdin.
"use strict";

const readline = require("node:readline");
const { Idempotency } = require("@node-idempotency/core");
const { RedisStorageAdapter } = require("@node-idempotency/storage-adapter-redis");

const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function step(name) {
  console.log(`STEP ${name}`);
  await lines.next();
}

function request(key, body) {
  return { method: "POST", path: "/charges", headers: { "idempotency-key": key }, body };
}

async function main() {
  for (const pkg of ["core", "storage-adapter-redis"]) {
    const { version } = require(`@node-idempotency/${pkg}/package.json`);
    console.log(`# @node-idempotency/${pkg} ${version}`);
  }
  console.log(`# redis (node-redis) ${require("redis/package.json").version}, node ${process.version}`);
  const storage = new RedisStorageAdapter({ url: `redis://127.0.0.1:${process.env.REDIS_PORT}` });
  await storage.connect();
  const idempotency = new Idempotency(storage);

  // (a) in progress: onRequest claimed the key, the handler has not answered yet
  const charge = request("8e03978e-40d5-43e8-bc93-6894a57f9324", { amount: 1250, currency: "eur" });
  console.log("onRequest ->", await idempotency.onRequest(charge));
  await step("IN PROGRESS (onRequest returned, no onResponse yet)");
  try {
    await idempotency.onRequest(charge);
  } catch (err) {
    console.log("duplicate while in progress ->", err.code, err.message);
  }
  await step("after a duplicate while in progress");

  // (b) completed: what the express plugin stores for a 2xx answer
  await idempotency.onResponse(charge, {
    additional: { statusCode: 201 },
    body: { id: "ch_3QkL9x", status: "succeeded", amount: 1250 },
  });
  await step("COMPLETE (onResponse with a 201 body)");
  console.log("replay ->", JSON.stringify(await idempotency.onRequest(charge)));
  await step("after a replay");

  // (c) failed: the express plugin stores a >= 400 answer under `error`
  const declined = request("c0ffee00-0000-4000-8000-000000000042", { amount: 99900, currency: "eur" });
  await idempotency.onRequest(declined);
  await idempotency.onResponse(declined, {
    additional: { statusCode: 402 },
    error: { message: "card declined", code: "card_declined" },
  });
  await step("after a failure (onResponse with a 402 error)");

  // (c') crashed: onRequest, then the process dies before onResponse
  const crashed = request("dead-beef-crashed", { amount: 5 });
  await idempotency.onRequest(crashed);
  await step("a request whose handler never answered (no onResponse)");

  // (d) per-request options: a custom prefix and TTL, and no body (no fingerprint)
  const custom = {
    method: "PUT",
    path: "/orders/7",
    headers: { "Idempotency-Key": "order-7-v2" },
    options: { cacheKeyPrefix: "shop-idem", cacheTTLMS: 60000 },
  };
  await idempotency.onRequest(custom);
  await step("custom cacheKeyPrefix and cacheTTLMS, no body: IN PROGRESS");
  await idempotency.onResponse(custom, { additional: { statusCode: 204 } });
  await step("custom cacheKeyPrefix and cacheTTLMS: COMPLETE with no body");

  await storage.disconnect();
  process.exit(0);
}

main().catch((err) => {
  console.error(err);
  process.exit(2);
});
