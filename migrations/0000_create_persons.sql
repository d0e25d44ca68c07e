CREATE TYPE "public"."gender" AS ENUM('MALE', 'FEMALE', 'OTHER', 'UNKNOWN');--> statement-breakpoint
CREATE TYPE "public"."privacy_level" AS ENUM('PUBLIC', 'MEMBERS_ONLY', 'PRIVATE');--> statement-breakpoint
CREATE TABLE "persons" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"given_name" text NOT NULL,
	"family_name" text NOT NULL,
	"birth_name" text,
	"nickname" text,
	"gender" "gender" DEFAULT 'UNKNOWN' NOT NULL,
	"birth_date" date,
	"death_date" date,
	"is_living" boolean DEFAULT true NOT NULL,
	"privacy" "privacy_level" DEFAULT 'MEMBERS_ONLY' NOT NULL,
	"notes" text,
	"created_at" timestamp DEFAULT now() NOT NULL,
	"updated_at" timestamp DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE INDEX "persons_family_name_given_name_idx" ON "persons" USING btree ("family_name","given_name");--> statement-breakpoint
CREATE INDEX "persons_birth_date_idx" ON "persons" USING btree ("birth_date");
