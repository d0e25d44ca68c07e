CREATE TABLE "families" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"partner1_id" uuid,
	"partner2_id" uuid,
	"union_date" date,
	"separation_date" date,
	"notes" text,
	"created_at" timestamp DEFAULT now() NOT NULL,
	"updated_at" timestamp DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "family_children" (
	"family_id" uuid NOT NULL,
	"child_id" uuid NOT NULL,
	"birth_order" integer,
	"is_adopted" boolean DEFAULT false NOT NULL,
	CONSTRAINT "family_children_family_id_child_id_pk" PRIMARY KEY("family_id","child_id")
);
--> statement-breakpoint
ALTER TABLE "families" ADD CONSTRAINT "families_partner1_id_persons_id_fk" FOREIGN KEY ("partner1_id") REFERENCES "public"."persons"("id") ON DELETE set null ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "families" ADD CONSTRAINT "families_partner2_id_persons_id_fk" FOREIGN KEY ("partner2_id") REFERENCES "public"."persons"("id") ON DELETE set null ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "family_children" ADD CONSTRAINT "family_children_family_id_families_id_fk" FOREIGN KEY ("family_id") REFERENCES "public"."families"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "family_children" ADD CONSTRAINT "family_children_child_id_persons_id_fk" FOREIGN KEY ("child_id") REFERENCES "public"."persons"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "families_partner1_id_partner2_id_idx" ON "families" USING btree ("partner1_id","partner2_id");--> statement-breakpoint
CREATE INDEX "family_children_child_id_idx" ON "family_children" USING btree ("child_id");
