// The schema drizzle-kit needs to run `generate --custom` for the fixture test (tests/field_files.rs).
import { pgTable, serial, text } from "drizzle-orm/pg-core";
export const people = pgTable("people", { id: serial("id").primaryKey(), name: text("name").notNull() });
