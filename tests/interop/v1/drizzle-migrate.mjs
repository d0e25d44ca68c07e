// Applies a migrations folder with drizzle-orm 1.0's own migrator (pinned in package.json here),
// so the interop tests can compare its result with vamsa-migrate's.
//
// Usage: DATABASE_URL=postgres://... node drizzle-migrate.mjs <migrationsFolder>
// Exit code: 0 on success, 1 on failure (the error message, and its cause, on stderr).
import pg from "pg";
import { drizzle } from "drizzle-orm/node-postgres";
import { migrate } from "drizzle-orm/node-postgres/migrator";

const migrationsFolder = process.argv[2];
const connectionString = process.env.DATABASE_URL;
if (!migrationsFolder || !connectionString) {
  console.error("usage: DATABASE_URL=... node drizzle-migrate.mjs <migrationsFolder>");
  process.exit(1);
}

const pool = new pg.Pool({ connectionString });
let code = 0;
try {
  await migrate(drizzle({ client: pool }), { migrationsFolder });
} catch (err) {
  // drizzle wraps driver errors as "Failed query: ..." with the pg error as cause.
  console.error(err?.message ?? String(err));
  if (err?.cause?.message) console.error(err.cause.message);
  code = 1;
} finally {
  // Always close the pool, otherwise node keeps running on idle connections.
  await pool.end();
}
process.exit(code);
