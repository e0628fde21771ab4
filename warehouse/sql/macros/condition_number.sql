-- name: condition_number
-- signature: condition_number(sv)
-- description: max_i s_i / min_{s_i > 0} s_i (the condition number of the matrix restricted
--    to its row space). NULL for an empty or all-zero spectrum.
-- uses: _ll_pos
CREATE OR REPLACE MACRO condition_number(sv) AS list_max(_ll_pos(sv)) / list_min(_ll_pos(sv));
