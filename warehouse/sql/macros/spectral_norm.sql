-- name: spectral_norm
-- signature: spectral_norm(sv)
-- description: max_i s_i (= ||W||_2). NULL for an empty spectrum.
CREATE OR REPLACE MACRO spectral_norm(sv) AS list_max(sv::DOUBLE[]);
