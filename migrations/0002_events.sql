CREATE TYPE "public"."event_type" AS ENUM('BIRTH', 'BAPTISM', 'MARRIAGE', 'DIVORCE', 'DEATH', 'BURIAL', 'RESIDENCE', 'OCCUPATION', 'CUSTOM');--> statement-breakpoint
CREATE TABLE "events" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"type" "event_type" NOT NULL,
	"date" date,
	"place" text,
	"description" text,
	"person_id" uuid,
	"family_id" uuid,
	"created_at" timestamp DEFAULT now() NOT NULL,
	"updated_at" timestamp DEFAULT now() NOT NULL,
	CONSTRAINT "events_subject_check" CHECK ("events"."person_id" IS NOT NULL OR "events"."family_id" IS NOT NULL)
);
--> statement-breakpoint
ALTER TABLE "events" ADD CONSTRAINT "events_person_id_persons_id_fk" FOREIGN KEY ("person_id") REFERENCES "public"."persons"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "events" ADD CONSTRAINT "events_family_id_families_id_fk" FOREIGN KEY ("family_id") REFERENCES "public"."families"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "events_person_id_idx" ON "events" USING btree ("person_id");--> statement-breakpoint
CREATE INDEX "events_family_id_idx" ON "events" USING btree ("family_id");--> statement-breakpoint
CREATE INDEX "events_type_date_idx" ON "events" USING btree ("type","date");
