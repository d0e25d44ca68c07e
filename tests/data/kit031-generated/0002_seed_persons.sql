-- Custom SQL migration file, put your code below! --
INSERT INTO "persons" ("name", "born") VALUES ('Asha', '1950-03-01'), ('Ravi', NULL);--> statement-breakpoint
INSERT INTO "places" ("label") VALUES ('Pune');
