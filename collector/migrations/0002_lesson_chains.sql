-- Continuations find the lessons that continue them (collector/lessons.py keeps
-- root_lesson_id exact when a chain arrives out of order).
CREATE INDEX lessons_continues ON lessons (school, device, continues) WHERE continues IS NOT NULL;
