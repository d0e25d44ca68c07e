// Applies a Drizzle migrations folder with drizzle-orm's own migrator, so the
// interop tests can compare its result with vamsa-migrate's.
//
// Usage: DATABASE_URL=postgres://... node drizzle-migrate.mjs <migrationsFolder>
// Optional env: MIGRATIONS_SCHEMA, MIGRATIONS_TABLE (drizzle's migrationsSchema /
// migrationsTable; drizzle defaults to "drizzle"."__drizzle_migrations").
// Exit code: 0 on success, 1 on failure (the error message is printed to stderr).
import pg from "pg";
import { drizzle } from "drizzle-orm/node-postgres";
import { migrate } from "drizzle-orm/node-postgres/migrator";

const migrationsFolder = process.argv[2];
const connectionString = process.env.DATABASE_URL;
if (!migrationsFolder || !connectionString) {
  console.error("usage: DATABASE_URL=... node drizzle-migrate.mjs <migrationsFolder>");
  process.exit(1);
}

// Only pass the overrides that are set, so drizzle's defaults apply otherwise.
const config = { migrationsFolder };
if (process.env.MIGRATIONS_SCHEMA) config.migrationsSchema = process.env.MIGRATIONS_SCHEMA;
if (process.env.MIGRATIONS_TABLE) config.migrationsTable = process.env.MIGRATIONS_TABLE;

const pool = new pg.Pool({ connectionString });
let code = 0;
try {
  await migrate(drizzle(pool), config);
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
