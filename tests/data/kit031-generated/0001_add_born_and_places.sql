CREATE TABLE "places" (
	"id" serial PRIMARY KEY NOT NULL,
	"label" text NOT NULL
);
--> statement-breakpoint
ALTER TABLE "persons" ADD COLUMN "born" date;--> statement-breakpoint
CREATE INDEX "persons_name_idx" ON "persons" USING btree ("name");