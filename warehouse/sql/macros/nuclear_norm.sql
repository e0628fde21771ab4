-- name: nuclear_norm
-- signature: nuclear_norm(sv)
-- description: sum_i s_i (= ||W||_*). NULL for an empty spectrum.
CREATE OR REPLACE MACRO nuclear_norm(sv) AS list_sum(sv::DOUBLE[]);
