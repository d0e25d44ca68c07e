CREATE TABLE "media" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"person_id" uuid,
	"file_path" text NOT NULL,
	"mime_type" text NOT NULL,
	"file_size" integer,
	"caption" text,
	"uploaded_at" timestamp DEFAULT now() NOT NULL,
	CONSTRAINT "media_file_path_unique" UNIQUE("file_path")
);
--> statement-breakpoint
ALTER TABLE "media" ADD CONSTRAINT "media_person_id_persons_id_fk" FOREIGN KEY ("person_id") REFERENCES "public"."persons"("id") ON DELETE set null ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "media_person_id_idx" ON "media" USING btree ("person_id");
